"""The python test image with a further 300 MB layer the python workload never reads (this
machine's /usr/share and /usr/lib/x86_64-linux-gnu under /opt/extra), as an OCI layout.

Usage: python3 benches/mkbigpy.py PYTHON_LAYOUT OUT_LAYOUT [UNCOMPRESSED_BYTES]   (default 300 MB)
"""
import gzip, hashlib, io, json, os, shutil, subprocess, sys, tarfile
src, dst = sys.argv[1], sys.argv[2]
limit = int(sys.argv[3]) if len(sys.argv) > 3 else 300000000
shutil.copytree(src, dst)
blobs = os.path.join(dst, "blobs/sha256")
def put(b):
    h = hashlib.sha256(b).hexdigest()
    open(os.path.join(blobs, h), "wb").write(b)
    return "sha256:" + h, len(b)
raw = subprocess.run("tar cf - --transform 's,^usr,opt/extra,' -C / usr/share usr/lib/x86_64-linux-gnu 2>/dev/null"
                     f" | head -c {limit}", shell=True, capture_output=True).stdout
# cut at a whole number of 512-byte records and end the archive properly
raw = raw[: len(raw) // 512 * 512]
t = tarfile.open(fileobj=io.BytesIO(raw + b"\0" * 10240), mode="r:")
out = io.BytesIO()
with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as w:
    try:
        for m in t:
            if m.offset_data + m.size > len(raw):
                break  # the entry the cut went through
            w.addfile(m, t.extractfile(m) if m.isfile() else None)
    except (tarfile.ReadError, EOFError):
        pass
layer = subprocess.run(["pigz", "-6", "-c"], input=out.getvalue(), capture_output=True, check=True).stdout
diff_id = "sha256:" + hashlib.sha256(out.getvalue()).hexdigest()
ld, ls = put(layer)
index = json.load(open(os.path.join(dst, "index.json")))
md = index["manifests"][0]["digest"]
m = json.load(open(os.path.join(blobs, md.split(":")[1])))
c = json.load(open(os.path.join(blobs, m["config"]["digest"].split(":")[1])))
c["rootfs"]["diff_ids"].append(diff_id)
cd, cs = put(json.dumps(c).encode())
m["config"]["digest"], m["config"]["size"] = cd, cs
m["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld, "size": ls})
nd, ns = put(json.dumps(m).encode())
index["manifests"][0]["digest"], index["manifests"][0]["size"] = nd, ns
json.dump(index, open(os.path.join(dst, "index.json"), "w"))
