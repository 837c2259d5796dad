#!/usr/bin/env bash
# Device check (one NVIDIA GPU, 16 CPUs): GPU tests, the embedding throughput target (issue 5), the CUDA stain
# path (issue 4) and the tiler's 2-worker scaling on a quiet multi-core machine (issue 3).
#
# How to call it (the lead):
#   1. Here, once, on a machine with PyPI access, from the repository root:
#          bash bench/gpu_check.sh --fetch-wheels
#      downloads into .whl/ (ignored by git) the cp312 manylinux x86_64 wheels of what the device image lacks:
#      zarr + numcodecs + donfig + google-crc32c, dask + partd + locket, shapely, imagecodecs, tifffile,
#      openslide-python + openslide-bin, tiffslide, geojson, torchstain, simplejpeg (versions pinned below to those
#      of .venv).
#      42 MiB.
#   2. On the device (one NVIDIA H100/H200; torch, timm, numba, h5py, scikit-image, pytest are in its image):
#          run(command="bash bench/gpu_check.sh", carry=[".whl", ".devdata"], timeout_s=560)
#      It installs nothing: the wheels are unpacked (python -m zipfile) into a temporary folder on PYTHONPATH and
#      the repository root is linked there as `slidestream`. Everything is printed; the log and the bench JSON
#      are written to $OUT when it is set (else /tmp).
#   Dry run of the plumbing on a CPU machine: PATH=.venv/bin:$PATH bash bench/gpu_check.sh --dry-run
#
# What it checks (exit status 0 only when all pass), each step under its own time limit (worst case ~510 s):
#   a. the GPU-marked tests and the CUDA stain tests (120 s);
#   b. bench/embed.py on CUDA: ViT-L/16 (the UNI architecture, random init, bf16) from a store of 8192
#      224 px patches of a synthetic slide: end-to-end >= 2,000 patches/s and >= 85 % of the bare forward (200 s);
#   c. bench/stain.py --cuda: per-slide Macenko on the GPU next to the CPU paths and torchstain (60 s);
#   d. bench/tile.py --only workers --only native: 2 worker processes vs 1 on two CPUs of different cores (the
#      default tiling job), and the native job against raw decoding, on a 60000x45000 synthetic slide written first
#      (~1 min), 2 rounds (130 s).
set -uo pipefail
cd "$(dirname "$0")/.."

# versions of .venv (python 3.11 here; the device runs 3.12, so the wheels are fetched for cp312)
WHEELS=(zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 dask==2026.8.0 partd==1.4.2
        locket==1.0.0 shapely==2.2.0 imagecodecs==2026.3.6 tifffile==2026.3.3 openslide-python==1.4.7
        openslide-bin==4.0.1.2 tiffslide==3.0.1 geojson==3.3.0 torchstain==1.4.1 simplejpeg==1.9.0)

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    PY=${PYTHON:-.venv/bin/python}
    mkdir -p .whl
    plat=()
    for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
             manylinux2014_x86_64 manylinux1_x86_64; do plat+=(--platform "$p"); done
    # pure-Python wheels match any platform; --no-deps because the device has the rest (torch, numpy, ...)
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${plat[@]}" -d .whl "${WHEELS[@]}" || exit 1
    ls -la .whl
    du -sh .whl
    exit 0
fi

RES=${OUT:-/tmp}
LOG=$RES/gpu_check.log
# --dry-run: the same steps on this machine's CPU with a tiny model and store, no thresholds: checks the script's
# plumbing (set PATH so that python3 is the venv's; cp312 wheels are skipped unless python3 is 3.12).
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
exec > >(tee "$LOG") 2>&1
status=0
t0=$(date +%s)
echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.cuda.is_available())"

echo "== environment (no installs: wheels unpacked into a temporary PYTHONPATH folder)"
SITE=$(mktemp -d /tmp/slidestream-site.XXXX)
PYV=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
if compgen -G ".whl/*.whl" >/dev/null && [[ "$PYV" == "3.12" ]]; then
    for w in .whl/*.whl; do python3 -m zipfile -e "$w" "$SITE" || { echo "cannot unpack $w"; exit 2; }; done
    echo "unpacked $(ls .whl/*.whl | wc -l) wheels into $SITE"
else
    echo "no .whl/ folder (or python $PYV is not 3.12): relying on the machine's own packages"
fi
ln -s "$PWD" "$SITE/slidestream"
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# ../shared does not travel to the device: a copy of the few files used here may come in .devdata/ (git-ignored;
# e.g. mkdir -p .devdata/slides && cp ../shared/data/slides/CMU-1-Small-Region.svs .devdata/slides/)
[[ -d .devdata ]] && export SLIDESTREAM_SHARED_DATA="$PWD/.devdata"
python3 - <<'EOF' || { echo "FAIL: imports (carry the wheels: bash bench/gpu_check.sh --fetch-wheels)"; exit 2; }
import importlib
for name in ("zarr", "dask", "shapely", "imagecodecs", "tifffile", "timm", "h5py", "numba", "openslide", "tiffslide",
             "torchstain"):
    try:
        mod = importlib.import_module(name)
        print(f"  {name:<12} {getattr(mod, '__version__', '?')}")
    except Exception as exc:  # openslide/tiffslide are optional backends; the rest are needed
        print(f"  {name:<12} MISSING ({exc})")
        if name not in ("openslide", "tiffslide", "torchstain"):
            raise
import slidestream.models.embed, slidestream.models.export, slidestream.synth  # noqa: E401
print("  slidestream imports OK")
EOF

echo "== a. GPU tests and CUDA stain tests"
mapfile -t gpu_tests < <(grep -lE "mark\.gpu" tests/*.py)
if (( ${#gpu_tests[@]} == 0 )); then
    echo "FAIL: no test file uses the gpu marker"; status=1
else
    echo "files: ${gpu_tests[*]} + tests/test_stain*.py -k cuda"
    timeout 90 python3 -m pytest -p no:cacheprovider -m gpu -q -rA "${gpu_tests[@]}" || { echo "FAIL: GPU tests"; status=1; }
    timeout 30 python3 -m pytest -p no:cacheprovider -q -rA tests/test_stain.py -k cuda \
        || { echo "FAIL: CUDA stain tests"; status=1; }
fi

echo "== b. ViT-L/16 (UNI architecture, random init, bf16): pipeline vs bare forward"
WORK=$(mktemp -d /tmp/slidestream-bench.XXXX)
if (( DRY )); then
    big=(--device cpu --models vit_tiny_patch16_224 --tiles 32 --batch 16 --rounds 1 --slide-size 4096 --no-check)
else
    big=(--device cuda --models uni --tiles 8192 --batch 256 --rounds 3 --slide-size 16384
         --min-ratio 0.85 --min-rate 2000)
fi
timeout 200 python3 bench/embed.py "${big[@]}" --dtypes bfloat16 --work-dir "$WORK" \
    --json "$RES/gpu_bench_vitl.json" || { echo "FAIL: ViT-L/16 acceptance"; status=1; }

echo "== c. stain: per-slide Macenko on CUDA next to the CPU paths and torchstain"
if (( DRY )); then
    timeout 60 python3 bench/stain.py --tiles 64 --no-check || echo "(stain bench did not finish)"
else
    timeout 60 python3 bench/stain.py --tiles 2048 --cuda || { echo "FAIL: stain targets"; status=1; }
fi

echo "== d. tiling: the native job against raw decoding; 2 worker processes vs 1 (wall) on two CPUs of different cores"
if (( DRY )); then
    timeout 130 python3 bench/tile.py --only workers --rounds 1 --size 8192x6144 --cache-dir "$WORK" --no-check \
        || echo "(tile bench did not finish)"
else
    timeout 130 python3 bench/tile.py --only workers --only native --rounds 2 --cache-dir "$WORK" \
        || { echo "FAIL (or timed out): tiling workers/native targets"; status=1; }
fi
rm -rf "$WORK"

echo "== done in $(( $(date +%s) - t0 )) s: $([[ $status == 0 ]] && echo PASS || echo FAIL)"
exit $status
