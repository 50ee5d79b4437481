#!/bin/sh
# gen_imagenet_labels.sh writes imagenet.txt: ImageNet-1k's 1000 class names,
# one per line in class-index order, taken from Debian's python3-torchvision
# (torchvision/models/_meta.py, _IMAGENET_CATEGORIES), not typed in.
#
# Usage: sh gen_imagenet_labels.sh [META_PY [OUT]]   (go generate ./archs/labels)
# META_PY defaults to $KILN_TORCHVISION_META, else Debian's path. The list is
# read with Python's ast.literal_eval, so torch is never imported.
set -eu
meta=${1:-${KILN_TORCHVISION_META:-/usr/lib/python3/dist-packages/torchvision/models/_meta.py}}
out=${2:-imagenet.txt}
if [ ! -r "$meta" ]; then
	echo "gen_imagenet_labels.sh: $meta not found: install python3-torchvision (apt-get install python3-torchvision)" >&2
	exit 1
fi
python3 - "$meta" "$out" <<'PY'
import ast, sys
meta, out = sys.argv[1], sys.argv[2]
tree = ast.parse(open(meta, encoding="utf-8").read(), meta)
names = None
for node in tree.body:
    if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_IMAGENET_CATEGORIES" for t in node.targets):
        names = ast.literal_eval(node.value)
if names is None:
    sys.exit("gen_imagenet_labels.sh: %s defines no _IMAGENET_CATEGORIES" % meta)
if len(names) != 1000 or any("\n" in n or not n.strip() for n in names):
    sys.exit("gen_imagenet_labels.sh: %s: want 1000 one-line names, got %d" % (meta, len(names)))
with open(out, "w", encoding="utf-8") as f:
    f.write("".join(n + "\n" for n in names))
PY
