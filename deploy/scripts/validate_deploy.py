#!/usr/bin/env python3
"""Static checks of deploy/ that need no cloud account: run by scripts/validate-deploy.

  hcl      every *.tf and *.hcl under deploy/ parses (python-hcl2)
  toml     pam.example.toml, the image's default config and the Terragrunt
           pam.toml templates (rendered with sample values) parse, and every
           key, target field, credential source and TLS mode exists in
           src/config/, with values of the right shape; pam.example.toml
           covers every key the broker knows
  env      every PAM_SECTION__KEY variable named under deploy/ is a real key
  keys     the key files of src/keys/mod.rs are the ones the entrypoint, the
           key generation script and the module handle
  broker   optionally, the real parser: `pam ca show user --config FILE` on each
           config (only with PAM_BIN, or a pam binary newer than src/config/)
  checkov  reads checkov JSON reports given with --checkov and fails on any
           failed check above LOW severity (all of them when checkov reports
           no severity, as without an API key) and on skips without a reason

Prints one line per problem and a summary; exit status 1 on any problem.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CONFIG_DIR = ROOT / "src" / "config"
CONFIG_FILES = sorted(CONFIG_DIR.glob("*.rs"))

DURATION = re.compile(r"^(\d+(ms|s|m|h|d))+$")
BYTE_SIZE = re.compile(r"^\d+ ?(B|KiB|MiB|GiB|TiB|kB|KB|MB|GB|TB)?$")
TARGET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def fail(self, msg: str) -> None:
        self.problems.append(msg)
        print(f"FAIL  {msg}")

    def note(self, msg: str) -> None:
        self.notes.append(msg)
        print(f"note  {msg}")


# --------------------------------------------------------------------------
# The configuration schema, read from src/config/
# --------------------------------------------------------------------------


def kebab(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


@dataclass
class Schema:
    sections: dict[str, dict[str, str]]  # section -> key -> Rust type
    targets: dict[str, dict[str, tuple[str, bool]]]  # kind -> field -> (type, required)
    credentials: dict[str, list[str]]  # from -> fields
    tls_modes: list[str]
    via_fields: list[str]


def struct_body(src: str, name: str) -> str:
    m = re.search(r"pub (?:struct|enum) " + name + r"\s*\{", src)
    if not m:
        raise ValueError(f"src/config/: {name} not found")
    depth, i = 1, m.end()
    while depth:
        depth += {"{": 1, "}": -1}.get(src[i], 0)
        i += 1
    return src[m.end() : i - 1]


def read_schema() -> Schema:
    src = "\n".join(f.read_text() for f in CONFIG_FILES)
    section_of = dict(re.findall(r"(\w+Config)::read\(\s*\"(\w+)\"", src))
    sections: dict[str, dict[str, str]] = {}
    for struct, section in ((s, n) for s, n in section_of.items()):
        body = struct_body(src, struct)
        keys = re.findall(r"^ {8}([a-z_][a-z0-9_]*): ([^=\n]+?) = ", body, re.M)
        if not keys:
            raise ValueError(f"src/config/: no keys found in {struct}")
        sections[section] = {k: t.strip() for k, t in keys}

    kinds = dict(re.findall(r"^\s*(\w+)\((\w+Target)\),", struct_body(src, "TargetKind"), re.M))
    targets: dict[str, dict[str, tuple[str, bool]]] = {}
    for variant, struct in kinds.items():
        body = struct_body(src, struct)
        fields: dict[str, tuple[str, bool]] = {}
        attrs: list[str] = []
        for line in body.splitlines():
            line = line.strip()
            if line.startswith("#["):
                attrs.append(line)
                continue
            m = re.match(r"pub (\w+): (.+),$", line)
            if m:
                name, ty = m.groups()
                optional = ty.startswith("Option<") or any("default" in a for a in attrs)
                fields[name] = (ty, not optional)
            if not line.startswith("///"):
                attrs = []
        targets[variant.lower()] = fields

    credentials: dict[str, list[str]] = {}
    for m in re.finditer(r"^\s*(\w+)(?:\s*\{([^}]*)\})?,", struct_body(src, "Credential"), re.M):
        variant, body = m.groups()
        credentials[kebab(variant)] = re.findall(r"(\w+):", body or "")
    tls_modes = [kebab(v) for v in re.findall(r"^\s*(\w+),", struct_body(src, "TlsMode"), re.M)]
    via_fields = re.findall(r"pub (\w+):", struct_body(src, "Via"))
    return Schema(sections, targets, credentials, tls_modes, via_fields)


# --------------------------------------------------------------------------
# Checking one configuration file
# --------------------------------------------------------------------------


def check_value(where: str, ty: str, value: object, report: Report) -> None:
    inner = ty[len("Option<") : -1] if ty.startswith("Option<") else ty
    ok = True
    if inner == "HumanDuration":
        ok = isinstance(value, str) and bool(DURATION.match(value))
    elif inner == "ByteSize":
        ok = (isinstance(value, int) and not isinstance(value, bool) and value >= 0) or (
            isinstance(value, str) and bool(BYTE_SIZE.match(value))
        )
    elif inner == "bool":
        ok = isinstance(value, bool)
    elif inner in ("usize", "u32", "u64"):
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    elif inner == "Vec<String>":
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    elif inner == "SocketAddr":
        ok = isinstance(value, str) and bool(re.match(r"^(\[[0-9a-f:]+\]|[0-9.]+):\d+$", value))
    elif inner == "Url":
        ok = isinstance(value, str) and bool(re.match(r"^https?://", value))
    elif inner in ("String", "PathBuf"):
        ok = isinstance(value, str)
    if not ok:
        report.fail(f"{where}: {value!r} is not a valid {inner}")


def check_config(path_label: str, doc: dict, schema: Schema, report: Report) -> None:
    for section, table in doc.items():
        # [[export]] sinks and [[discovery]] sources are checked by the
        # broker's own parser (step_broker).
        if section in ("target", "export", "discovery"):
            continue
        if section not in schema.sections:
            report.fail(f"{path_label}: unknown section [{section}]")
            continue
        for key, value in table.items():
            ty = schema.sections[section].get(key)
            if ty is None:
                report.fail(f"{path_label}: unknown key {section}.{key}")
            else:
                check_value(f"{path_label}: {section}.{key}", ty, value, report)

    names: set[str] = set()
    for i, target in enumerate(doc.get("target", [])):
        label = f"{path_label}: target[{i}] {target.get('name', '?')!r}"
        name, kind = target.get("name"), target.get("kind")
        if not isinstance(name, str) or not TARGET_NAME.match(name):
            report.fail(f"{label}: invalid name")
        elif name in names:
            report.fail(f"{label}: duplicate name")
        names.add(str(name))
        if kind not in schema.targets:
            report.fail(f"{label}: unknown kind {kind!r}")
            continue
        fields = schema.targets[kind]
        for key, value in target.items():
            if key in ("name", "kind"):
                continue
            if key == "tags":
                if not (isinstance(value, dict) and all(isinstance(v, str) for v in value.values())):
                    report.fail(f"{label}.tags: must map strings to strings")
                continue
            if key not in fields:
                report.fail(f"{label}: unknown field {key!r} for kind {kind}")
                continue
            ty = fields[key][0]
            if ty == "Credential":
                check_credential(f"{label}.credential", value, schema, report)
            elif ty == "TlsMode":
                if value not in schema.tls_modes:
                    report.fail(f"{label}.tls: {value!r} not one of {schema.tls_modes}")
            elif ty == "Option<Via>":
                if not isinstance(value, dict) or set(value) != set(schema.via_fields):
                    report.fail(f"{label}.via: expected keys {schema.via_fields}")
            else:
                check_value(f"{label}.{key}", ty, value, report)
        for key, (_, required) in fields.items():
            if required and key not in target:
                report.fail(f"{label}: missing required field {key!r}")
        # The broker's own cross-field rules (check_target in src/config/).
        cred = target.get("credential", {"from": "broker-ca"})
        if kind == "ssh" and "host_key" not in target and "host_ca" not in target:
            report.fail(f"{label}: set host_key or host_ca")
        if kind == "postgres" and cred.get("from") == "broker-ca":
            report.fail(f"{label}: postgres targets need secretsmanager or rds-iam")
        if kind == "postgres" and cred.get("from") == "rds-iam" and target.get("tls") == "disable":
            report.fail(f"{label}: rds-iam needs TLS")
        if kind == "aws":
            arn = str(target.get("role_arn", ""))
            if not arn.startswith("arn:aws") or ":role/" not in arn:
                report.fail(f"{label}.role_arn: not an IAM role ARN")
        if kind == "ecs" and "service" not in target and "task" not in target:
            report.fail(f"{label}: set service or task")


def check_credential(label: str, value: object, schema: Schema, report: Report) -> None:
    if not isinstance(value, dict) or value.get("from") not in schema.credentials:
        report.fail(f"{label}: 'from' must be one of {list(schema.credentials)}")
        return
    expected = set(schema.credentials[value["from"]])
    got = set(value) - {"from"}
    if got != expected:
        report.fail(f"{label}: from = {value['from']!r} takes {sorted(expected) or 'no other keys'}, got {sorted(got)}")


def check_coverage(path: Path, doc: dict, schema: Schema, report: Report) -> None:
    """pam.example.toml must show every key (set, or as a commented-out line)."""
    commented: set[tuple[str, str]] = set()
    section = ""
    for line in path.read_text().splitlines():
        m = re.match(r"^\s*\[{1,2}\s*([a-z_]+)\s*\]{1,2}", line)
        if m:
            section = m.group(1)
        m = re.match(r"^\s*#\s*([a-z_]+)\s*=", line)
        if m:
            commented.add((section, m.group(1)))
    missing = []
    for section, keys in schema.sections.items():
        for key in keys:
            if key not in doc.get(section, {}) and (section, key) not in commented:
                missing.append(f"{section}.{key}")
    targets = doc.get("target", [])
    for kind, fields in schema.targets.items():
        used = {k for t in targets if t.get("kind") == kind for k in t}
        if not used:
            missing.append(f"a [[target]] of kind {kind}")
        missing += [f"target ({kind}).{k}" for k in fields if k not in used]
    used_from = {t.get("credential", {}).get("from") for t in targets}
    missing += [f"credential from = {c!r}" for c in schema.credentials if c not in used_from]
    text = path.read_text()
    missing += [f"tls mode {m!r} (value or comment)" for m in schema.tls_modes if m not in text]
    for item in missing:
        report.fail(f"{path.relative_to(ROOT)}: does not cover {item}")
    report.counts["example_keys"] = sum(len(k) for k in schema.sections.values()) + sum(
        len(f) for f in schema.targets.values()
    )


def render_template(text: str) -> str:
    sample = {
        "account_id": "123456789012",
        "environment": "prod",
        "oidc_issuer": "https://sso.example.com/realms/staff",
        "ecs_cluster": "prod",
    }

    def value(m: re.Match) -> str:
        name = m.group(1)
        if name in sample:
            return sample[name]
        if name.endswith("_address"):
            return f"{name.removesuffix('_address')}.c1x2y3z4w5v6.eu-central-1.rds.amazonaws.com:5432"
        return f"sample-{name}"

    return re.sub(r"\$\{(\w+)\}", value, text)


# --------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------


def step_hcl(report: Report) -> None:
    import hcl2

    files = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".tf", ".hcl") and ".terragrunt-cache" not in p.parts and ".terraform" not in p.parts)
    for path in files:
        try:
            with path.open() as fh:
                hcl2.load(fh)
        except Exception as e:  # noqa: BLE001 - report any parser error with its file
            report.fail(f"{path.relative_to(ROOT)}: HCL parse error: {str(e).strip().splitlines()[0]}")
    report.counts["hcl_files"] = len(files)


def step_toml(schema: Schema, report: Report) -> list[tuple[str, Path]]:
    """Returns (label, file) pairs ready for the real parser."""
    checked: list[tuple[str, Path]] = []
    tmp = Path(tempfile.mkdtemp(prefix="pam-validate-"))
    example = DEPLOY / "pam.example.toml"
    sources = [example, DEPLOY / "docker" / "pam.container.toml"] + sorted(DEPLOY.rglob("*.toml.tftpl"))
    for path in sources:
        label = str(path.relative_to(ROOT))
        text = path.read_text()
        if path.name.endswith(".tftpl"):
            text = render_template(text)
            label += " (rendered)"
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            report.fail(f"{label}: TOML parse error: {e}")
            continue
        check_config(label, doc, schema, report)
        if path == example:
            check_coverage(path, doc, schema, report)
        out = tmp / (path.name.replace("/", "_") + f".{len(checked)}.toml")
        out.write_text(text)
        checked.append((label, out))
    report.counts["toml_files"] = len(checked)
    return checked


def step_env(schema: Schema, report: Report) -> None:
    seen: set[str] = set()
    for path in sorted(DEPLOY.rglob("*")):
        if not path.is_file() or path.suffix in (".png", ".jpg"):
            continue
        for var in re.findall(r"\bPAM_([A-Z]+)__([A-Z0-9_]+)\b", path.read_text(errors="replace")):
            section, key = var[0].lower(), var[1].lower()
            name = f"PAM_{var[0]}__{var[1]}"
            if name in seen:
                continue
            seen.add(name)
            if (section, key) == ("section", "key"):  # the documented pattern itself
                continue
            if section not in schema.sections:
                report.fail(f"{path.relative_to(ROOT)}: {name}: no section [{section}]")
            elif key not in schema.sections[section]:
                report.fail(f"{path.relative_to(ROOT)}: {name}: no key {section}.{key}")
    report.counts["env_vars"] = len(seen)


def step_key_files(report: Report) -> None:
    """The five key files of src/keys/mod.rs are named everywhere key material is handled."""
    src = (ROOT / "src" / "keys" / "mod.rs").read_text()
    m = re.search(r"const FILES: \[&str; \d+\] = \[(.*?)\];", src, re.S)
    if not m:
        report.fail("src/keys/mod.rs: key file list (const FILES) not found")
        return
    names = re.findall(r'"(\w+)"', m.group(1))
    users = [
        DEPLOY / "docker" / "entrypoint.sh",
        DEPLOY / "scripts" / "init-key-material.sh",
        DEPLOY / "terraform" / "modules" / "pam" / "main.tf",
    ]
    for path in users:
        text = path.read_text()
        for name in names:
            if name not in text:
                report.fail(f"{path.relative_to(ROOT)}: does not handle key file {name} (src/keys/mod.rs)")
    report.counts["key_files"] = len(names)


def find_pam_binary() -> tuple[Path | None, str]:
    explicit = os.environ.get("PAM_BIN")
    if explicit:
        return Path(explicit), "PAM_BIN"
    target = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/pam/target"))
    config_mtime = max(f.stat().st_mtime for f in CONFIG_FILES)
    for profile in ("release", "debug"):
        candidate = target / profile / "pam"
        if candidate.is_file() and candidate.stat().st_mtime >= config_mtime:
            return candidate, f"{candidate} (newer than src/config/)"
    return None, "no pam binary newer than src/config/ (set PAM_BIN to force)"


def step_broker(configs: list[tuple[str, Path]], report: Report) -> None:
    binary, why = find_pam_binary()
    if binary is None:
        report.note(f"broker parser check skipped: {why}")
        report.counts["broker_checked"] = 0
        return
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        report.fail(f"PAM_BIN={binary} is not an executable file")
        return
    ok = 0
    with tempfile.TemporaryDirectory(prefix="pam-validate-keys-") as keys:
        env = {"PATH": os.environ.get("PATH", ""), "HOME": keys, "PAM_SERVER__KEYS_DIR": keys, "PAM_SERVER__DATA_DIR": keys}
        for label, path in configs:
            run = subprocess.run([str(binary), "ca", "show", "user", "--config", str(path)], env=env, capture_output=True, text=True, timeout=60, cwd=keys)
            # A valid config gets as far as loading keys, which do not exist here.
            if "no key material" in run.stderr:
                ok += 1
            else:
                report.fail(f"{label}: rejected by {binary.name}: {run.stderr.strip() or run.stdout.strip()}")
    report.counts["broker_checked"] = ok
    print(f"ok    broker parser ({why}) accepted {ok}/{len(configs)} configs")


def step_checkov(reports: list[Path], report: Report) -> None:
    passed = failed = skipped = 0
    tolerated = 0
    for path in reports:
        data = json.loads(path.read_text() or "[]")
        for run in data if isinstance(data, list) else [data]:
            summary = run.get("summary", {})
            if summary.get("parsing_errors"):
                report.fail(f"checkov ({run.get('check_type')}): {summary['parsing_errors']} files could not be parsed")
            results = run.get("results", {})
            passed += len(results.get("passed_checks", []))
            for check in results.get("failed_checks", []):
                severity = (check.get("severity") or "").upper()
                where = f"{check.get('repo_file_path') or check.get('file_path')}:{check.get('resource')}"
                if severity in ("LOW", "INFO"):
                    tolerated += 1
                    report.note(f"checkov {check['check_id']} ({severity}) {where}: {check.get('check_name')}")
                else:
                    failed += 1
                    report.fail(f"checkov {check['check_id']} ({severity or 'no severity'}) {where}: {check.get('check_name')}")
            for check in results.get("skipped_checks", []):
                skipped += 1
                reason = (check.get("check_result") or {}).get("suppress_comment") or ""
                if len(reason.strip()) < 20 or reason.strip().lower() == "no comment provided":
                    report.fail(f"checkov skip of {check['check_id']} on {check.get('resource')} has no written reason")
    report.counts.update(checkov_passed=passed, checkov_failed=failed, checkov_skipped=skipped, checkov_low=tolerated)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkov", type=Path, action="append", default=[], help="checkov JSON report (repeatable)")
    parser.add_argument("--summary", type=Path, help="write the counts as JSON here")
    args = parser.parse_args()

    report = Report()
    schema = read_schema()
    print(
        f"ok    schema from src/config/: {len(schema.sections)} sections, "
        f"{sum(map(len, schema.sections.values()))} keys, target kinds {sorted(schema.targets)}, "
        f"credentials {sorted(schema.credentials)}, tls {schema.tls_modes}"
    )
    step_hcl(report)
    configs = step_toml(schema, report)
    step_env(schema, report)
    step_key_files(report)
    step_broker(configs, report)
    if args.checkov:
        step_checkov(args.checkov, report)
    report.counts["problems"] = len(report.problems)
    if args.summary:
        args.summary.write_text(json.dumps(report.counts))
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
