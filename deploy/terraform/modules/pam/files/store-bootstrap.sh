#!/bin/sh
# store-bootstrap: makes STORE_USER the owner of the broker's database with the
# password from the store secret. Idempotent; re-run after a password bump.
# Connection settings come from PG* variables (master user via ECS secrets).
#
# The password reaches PostgreSQL inside ALTER ROLE; the parameter group keeps
# log_statement off and logs roles through pgaudit, which redacts passwords.
set -eu

: "${STORE_USER:?}" "${STORE_PASSWORD:?}"

psql --no-psqlrc --set ON_ERROR_STOP=1 --quiet \
  --set store_user="$STORE_USER" --set store_password="$STORE_PASSWORD" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'store_user')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'store_user') \gexec

ALTER ROLE :"store_user" WITH LOGIN NOCREATEDB NOCREATEROLE
  CONNECTION LIMIT 500 PASSWORD :'store_password';

-- The master user must be able to SET ROLE to the new owner (PostgreSQL 16+).
SELECT format('GRANT %I TO CURRENT_USER WITH SET TRUE', :'store_user')
 WHERE current_setting('server_version_num')::int >= 160000 \gexec
SELECT format('GRANT %I TO CURRENT_USER', :'store_user')
 WHERE current_setting('server_version_num')::int < 160000 \gexec

ALTER DATABASE :"DBNAME" OWNER TO :"store_user";
REVOKE ALL ON DATABASE :"DBNAME" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"DBNAME" TO :"store_user";

CREATE EXTENSION IF NOT EXISTS pgaudit;

SELECT 'store ready: ' || :'store_user' || ' owns database ' || current_database() AS status;
SQL
