#!/usr/bin/env bash
# One prepared device run: CUDA tests of capture/training, then a long cluttered-MNIST
# experiment (does the transformer localise with more training?). Writes to $OUT.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee $OUT/gpu.txt
python3 -c "import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.get_device_name(0))" | tee -a $OUT/gpu.txt
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_capture.py tests/test_modules.py tests/test_train.py tests/test_models_resnet.py -x 2>&1 | tee $OUT/pytest.txt | tail -15
timeout 330 python3 scripts/clutter_long.py 2>&1 | tee $OUT/clutter.txt
