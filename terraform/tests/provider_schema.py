"""Checks every resource type, data source, argument and nested block against the hashicorp/aws
provider's own schema, as carried by npm @cdktf/provider-aws (generated from the provider).

usage: provider_schema.py PACKAGE_DIR MODULE_DIR
  PACKAGE_DIR: node_modules/@cdktf/provider-aws of the pinned version (scripts/test installs it).
  Every .tf file in MODULE_DIR and MODULE_DIR/examples/* is checked.
Prints one line per problem (file, block, bad name) and exits 1 if there is any.

The package's .jsii manifest (~130 MB) is read once and reduced to a compact schema, cached as
PACKAGE_DIR/../../../connscale-schema-<version>-x<N>.json (keyed on the package version and this file's
extractor version), so a run takes well under a second.

How the manifest maps to terraform:
- A class with a static `tfResourceType` is a resource type, a data source (class name
  `DataAws...`, docs under /data-sources/) or the provider itself (`aws`). The value is in the
  class's compiled JS (`Class.tfResourceType = "aws_x";`), not in the manifest.
- The class's initializer takes its `...Config` struct: its properties are the arguments and
  nested blocks. A property whose type is (a list of) another struct is a nested block (or an
  object-typed attribute); its struct is checked recursively.
- jsii names are camelCase; each property's docs link ends in `#snake_name`, the provider's own
  name (cdktf renames some, e.g. a `count` argument), so that is used, not a case conversion.
"""
import glob, json, os, re, sys

EXTRACTOR_VERSION = 1
# Terraform's own arguments, valid in every resource / data block (not the provider's schema).
META_ARGS = {"count", "for_each", "depends_on", "provider", "lifecycle", "provisioner", "connection"}

def struct_of(t):
    """The struct fqn a jsii type refers to (directly, in a collection, or in a union), or None."""
    if not isinstance(t, dict):
        return None
    if "fqn" in t:
        return None if t["fqn"].startswith("cdktf.") else t["fqn"]
    if "collection" in t:
        return struct_of(t["collection"].get("elementtype"))
    if "union" in t:
        for u in t["union"]["types"]:
            s = struct_of(u)
            if s:
                return s
    return None

def snake(prop):
    """The provider's name for a jsii property: the `#name` its docs link ends with."""
    docs = prop.get("docs", {})
    text = docs.get("summary", "") + " " + docs.get("remarks", "")
    m = re.search(r"#([a-z0-9_]+)\}", text)
    if m:
        return m.group(1)
    return re.sub(r"(?<!^)([A-Z])", r"_\1", prop["name"]).lower()

def extract(pkg):
    """Compact schema: {version, provider_version, resource: {type: struct}, data: {...},
    provider: struct, structs: {fqn: {name: child struct or null}}}."""
    with open(os.path.join(pkg, ".jsii")) as f:
        jsii = json.load(f)
    types = jsii["types"]
    structs, out = {}, {"resource": {}, "data": {}, "provider": None}

    def add(fqn):
        if fqn in structs or fqn not in types:
            return
        structs[fqn] = {}
        for p in types[fqn].get("properties", []):
            child = struct_of(p["type"])
            structs[fqn][snake(p)] = child
            if child:
                add(child)

    for fqn, t in types.items():
        if t["kind"] != "class" or not any(
            p.get("static") and p["name"] == "tfResourceType" for p in t.get("properties", [])
        ):
            continue
        src = t["locationInModule"]["filename"].replace("src/", "lib/", 1).replace(".ts", ".js")
        with open(os.path.join(pkg, src)) as f:
            m = re.search(re.escape(t["name"]) + r'\.tfResourceType = "([^"]+)";', f.read())
        assert m, f"no tfResourceType value for {fqn} in {src}"
        params = t["initializer"]["parameters"]
        config = next(struct_of(p["type"]) for p in params if p["name"] == "config")
        add(config)
        summary = t["docs"].get("summary", "")
        if m.group(1) == "aws":
            out["provider"] = config
        elif "/data-sources/" in summary:
            out["data"][m.group(1)] = config
        else:
            out["resource"][m.group(1)] = config
    pv = re.search(r"hashicorp/aws/([0-9.]+)/", json.dumps(types[out["provider"]]["properties"][0]))
    out.update(
        version=jsii["version"],
        extractor=EXTRACTOR_VERSION,
        provider_version=pv.group(1) if pv else "?",
        structs=structs,
    )
    return out

def load_schema(pkg):
    with open(os.path.join(pkg, "package.json")) as f:
        version = json.load(f)["version"]
    cache = os.path.join(pkg, "..", "..", "..", f"connscale-schema-{version}-x{EXTRACTOR_VERSION}.json")
    if os.path.exists(cache):
        with open(cache) as f:
            return json.load(f)
    schema = extract(pkg)
    tmp = f"{cache}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(schema, f)
    os.replace(tmp, cache)  # atomic: tests running at once never read half a file
    return schema

# --- checking -------------------------------------------------------------------------------
def unq(s):
    return s.strip('"') if isinstance(s, str) else s

def check_body(schema, struct, body, where, problems):
    """Checks one block body's argument and block names against `struct`, recursively."""
    known = schema["structs"][struct]
    for key, value in body.items():
        if key.startswith("__"):  # python-hcl2's __comments__, __start_line__ ...
            continue
        if key == "dynamic":
            for dyn in value:
                for label, spec in dyn.items():
                    label = unq(label)
                    if label not in known:
                        problems.append(f"{where}: unknown block {label!r} (dynamic)")
                    elif known[label] is None:
                        problems.append(f"{where}: {label!r} is an argument, not a block (dynamic)")
                    else:
                        for content in spec.get("content", []):
                            check_body(schema, known[label], content, f"{where}.{label}", problems)
            continue
        if key not in known:
            problems.append(f"{where}: unknown argument or block {key!r}")
            continue
        child = known[key]
        if child is None:
            continue
        # A nested block is a list of bodies; an object-typed argument is one dict (or a list).
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, dict):
                check_body(schema, child, item, f"{where}.{key}", problems)

def check_file(schema, path, doc, problems):
    for kind in ("resource", "data"):
        for block in doc.get(kind, []):
            for rtype, named in block.items():
                rtype = unq(rtype)
                for name, body in named.items():
                    where = f"{path}: {'data.' if kind == 'data' else ''}{rtype}.{unq(name)}"
                    struct = schema[kind].get(rtype)
                    if struct is None:
                        what = "resource type" if kind == "resource" else "data source"
                        problems.append(f"{where}: unknown {what} {rtype!r}")
                        continue
                    meta = {k: v for k, v in body.items() if k not in META_ARGS}
                    check_body(schema, struct, meta, where, problems)
    for block in doc.get("provider", []):
        for pname, body in block.items():
            if unq(pname) == "aws":
                meta = {k: v for k, v in body.items() if k != "alias"}
                check_body(schema, schema["provider"], meta, f"{path}: provider.aws", problems)

def main():
    import hcl2

    pkg, module = sys.argv[1], sys.argv[2]
    schema = load_schema(pkg)
    files = sorted(glob.glob(os.path.join(module, "*.tf")))
    files += sorted(glob.glob(os.path.join(module, "examples", "*", "*.tf")))
    problems = []
    for path in files:
        rel = os.path.relpath(path, module)
        try:
            with open(path) as f:
                doc = hcl2.load(f)
        except Exception as e:  # noqa: BLE001 - any parse failure is a problem to report
            problems.append(f"{rel}: does not parse: {e}")
            continue
        check_file(schema, rel, doc, problems)
    for p in problems:
        print(p)
    print(
        f"checked {len(files)} files against hashicorp/aws {schema['provider_version']} "
        f"(@cdktf/provider-aws {schema['version']}: {len(schema['resource'])} resource types, "
        f"{len(schema['data'])} data sources): {len(problems)} problem(s)"
    )
    sys.exit(1 if problems else 0)

if __name__ == "__main__":
    main()
