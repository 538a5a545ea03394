"""Import cost of segaudit, as a ratio to importing torch alone (each in a fresh interpreter, best of 3).

Run: .venv/bin/python bench/import_time.py
"""
import subprocess
import sys
import time


def best_of(code: str, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - start)
    return min(times)


if __name__ == "__main__":
    base = best_of("pass")
    torch_s = best_of("import torch")
    sa_s = best_of("import segaudit")
    full_s = best_of("import segaudit.models, segaudit.data; segaudit.models.catalog.import_smp()")
    print(f"python startup        {base:6.2f} s")
    print(f"import torch          {torch_s:6.2f} s")
    print(f"import segaudit       {sa_s:6.2f} s  ({sa_s / torch_s:.2f}x torch; target < 5 s)")
    print(f"+ smp and data layer  {full_s:6.2f} s  ({full_s / torch_s:.2f}x torch)")
    import torch  # noqa: E402  (the build in use)

    print(f"torch {torch.__version__}, CUDA build: {torch.version.cuda is not None}")
