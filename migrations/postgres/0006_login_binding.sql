-- A browser login is bound to the browser that started it: the SHA-256 of
-- its pre-login cookie, checked when the IdP sends the browser back (login
-- CSRF: a callback carrying another browser's state is refused).
ALTER TABLE login_requests ADD COLUMN browser_binding TEXT;
