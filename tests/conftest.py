import os

# Tests run on the CPU, with few threads, whatever machine they are on.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
