#!/usr/bin/env bash
# One prepared device run: the CUDA tests and the package's tests on a GPU machine, then the
# RTS ST-CNN training run of the benchmark on CUDA (for the README's GPU figure). Writes to $OUT.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee $OUT/gpu.txt
python3 -c "import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.get_device_name(0))" | tee -a $OUT/gpu.txt
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_capture.py tests/test_modules.py \
    tests/test_train.py tests/test_models_resnet.py tests/test_cam.py tests/test_nonlocal.py 2>&1 | tee $OUT/pytest.txt | tail -15
timeout 200 python3 scripts/gpu_rts.py 2>&1 | tee $OUT/rts.txt
