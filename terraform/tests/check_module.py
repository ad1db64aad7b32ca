"""Static checks of the terraform module (no providers can be downloaded here).

usage: check_module.py MODULE_DIR TFVARS_JSON

1. Every .tf file (module and examples) parses with python-hcl2.
2. Every reference resolves: var.X to a declared variable, local.X to a local, data.T.N and
   T.N (aws_*) to a declared data source / resource, module.X to a module block.
3. Every key in TFVARS_JSON (what `connscale export terraform` writes) is a declared variable and
   its value matches the variable's type (number, string, bool, list(...), map(...),
   object({...}) with optional(...) attributes, null only where the type allows it).
Prints one line per problem and exits 1 if there is any.
"""
import glob, json, os, re, sys
import hcl2

def unq(s):
    return s.strip('"') if isinstance(s, str) else s

def load(path):
    with open(path) as f:
        return hcl2.load(f)

def strings(x):
    if isinstance(x, str):
        yield x
    elif isinstance(x, dict):
        for k, v in x.items():
            if k != "__comments__":
                yield from strings(v)
    elif isinstance(x, list):
        for v in x:
            yield from strings(v)

# --- type expressions -----------------------------------------------------------------------
def parse_type(s):
    s = s.strip()
    if s.startswith("${") and s.endswith("}"):
        s = s[2:-1]
    t, rest = _type(s.replace(" ", ""))
    assert rest == "", f"trailing {rest!r} in type {s!r}"
    return t

def _skip_default(s):
    """The rest after optional(T, DEFAULT)'s default value: up to its closing parenthesis."""
    depth, quoted, i = 0, False, 0
    while i < len(s):
        c = s[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            if depth == 0:
                return s[i:]
            depth -= 1
        i += 1
    raise AssertionError(f"unclosed optional() default at {s!r}")

def _type(s):
    for prim in ("number", "string", "bool", "any"):
        if s.startswith(prim) and not s[len(prim):len(prim) + 1].isalnum():
            return (prim,), s[len(prim):]
    for coll in ("list", "set", "map", "optional"):
        if s.startswith(coll + "("):
            inner, rest = _type(s[len(coll) + 1:])
            if coll == "optional" and rest.startswith(","):
                rest = _skip_default(rest[1:])
            assert rest.startswith(")"), rest
            return (coll, inner), rest[1:]
    if s.startswith("object({"):
        s = s[len("object({"):]
        attrs = {}
        while not s.startswith("})"):
            name, s = s.split("=", 1)
            t, s = _type(s)
            attrs[name] = t
            if s.startswith(","):
                s = s[1:]
        return ("object", attrs), s[2:]
    raise AssertionError(f"unknown type at {s!r}")

def check_value(v, t, path, problems):
    kind = t[0]
    if kind == "optional":
        if v is None:
            return
        return check_value(v, t[1], path, problems)
    if v is None:
        problems.append(f"{path}: null where the type {kind} does not allow it")
        return
    if kind == "any":
        return
    if kind == "number":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            problems.append(f"{path}: {v!r} is not a number")
    elif kind == "string":
        if not isinstance(v, str):
            problems.append(f"{path}: {v!r} is not a string")
    elif kind == "bool":
        if not isinstance(v, bool):
            problems.append(f"{path}: {v!r} is not a bool")
    elif kind in ("list", "set"):
        if not isinstance(v, list):
            problems.append(f"{path}: {v!r} is not a list")
        else:
            for i, item in enumerate(v):
                check_value(item, t[1], f"{path}[{i}]", problems)
    elif kind == "map":
        if not isinstance(v, dict):
            problems.append(f"{path}: not a map")
        else:
            for k, item in v.items():
                check_value(item, t[1], f"{path}.{k}", problems)
    elif kind == "object":
        if not isinstance(v, dict):
            problems.append(f"{path}: {v!r} is not an object")
            return
        for k in v:
            if k not in t[1]:
                problems.append(f"{path}.{k}: attribute not in the variable's object type")
        for k, at in t[1].items():
            if k not in v and at[0] != "optional":
                problems.append(f"{path}.{k}: required attribute missing")
            elif k in v:
                check_value(v[k], at, f"{path}.{k}", problems)

# --- module ---------------------------------------------------------------------------------
def check_dir(d, problems, tfvars=None):
    files = sorted(glob.glob(os.path.join(d, "*.tf")))
    assert files, f"no .tf files in {d}"
    docs = {}
    for f in files:
        try:
            docs[f] = load(f)
        except Exception as e:  # noqa: BLE001 - report any parse failure as a problem
            problems.append(f"{f}: does not parse: {e}")
    variables, locals_, resources, datas, modules = {}, set(), set(), set(), set()
    for doc in docs.values():
        for v in doc.get("variable", []):
            for name, body in v.items():
                variables[unq(name)] = body.get("type", "any")
        for l in doc.get("locals", []):
            locals_.update(k for k in l if not k.startswith("__"))
        for r in doc.get("resource", []):
            for rtype, named in r.items():
                for name in named:
                    resources.add(f"{unq(rtype)}.{unq(name)}")
        for r in doc.get("data", []):
            for rtype, named in r.items():
                for name in named:
                    datas.add(f"{unq(rtype)}.{unq(name)}")
        for m in doc.get("module", []):
            modules.update(unq(k) for k in m)
    for f, doc in docs.items():
        for s in strings(doc):
            for name in re.findall(r"\bvar\.([A-Za-z_][A-Za-z0-9_]*)", s):
                if name not in variables:
                    problems.append(f"{f}: var.{name} is not declared")
            for name in re.findall(r"\blocal\.([A-Za-z_][A-Za-z0-9_]*)", s):
                if name not in locals_:
                    problems.append(f"{f}: local.{name} is not defined")
            for t, n in re.findall(r"\bdata\.([a-z0-9_]+)\.([A-Za-z0-9_]+)", s):
                if f"{t}.{n}" not in datas:
                    problems.append(f"{f}: data.{t}.{n} is not declared")
            for t, n in re.findall(r"(?<![.\w])(aws_[a-z0-9_]+)\.([A-Za-z0-9_]+)", s):
                if f"{t}.{n}" not in resources:
                    problems.append(f"{f}: {t}.{n} is not declared")
            for n in re.findall(r"\bmodule\.([A-Za-z0-9_]+)", s):
                if n not in modules:
                    problems.append(f"{f}: module.{n} is not declared")
    for name, t in variables.items():
        try:
            parse_type(t)
        except AssertionError as e:
            problems.append(f"variable {name}: cannot read its type: {e}")
    if tfvars is not None:
        for k, v in tfvars.items():
            if k not in variables:
                problems.append(f"tfvars key {k!r} is not a variable in {d}/variables.tf")
            else:
                check_value(v, parse_type(variables[k]), k, problems)
    return variables

def main():
    module, tfvars_path = sys.argv[1], sys.argv[2]
    problems = []
    with open(tfvars_path) as f:
        tfvars = json.load(f)
    check_dir(module, problems, tfvars)
    for ex in sorted(glob.glob(os.path.join(module, "examples", "*"))):
        if os.path.isdir(ex):
            check_dir(ex, problems)
            for tv in glob.glob(os.path.join(ex, "*.tfvars")):
                try:
                    load(tv)
                except Exception as e:  # noqa: BLE001
                    problems.append(f"{tv}: does not parse: {e}")
    for p in problems:
        print(p)
    print(f"checked {module}: {len(problems)} problem(s)")
    sys.exit(1 if problems else 0)

main()
