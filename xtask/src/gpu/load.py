"""A GPU job whose truth is known, for `cargo xtask gpu-check`.

With PyTorch where it is installed (the device machine has it), else
through the CUDA driver API alone (libcuda.so.1, which every NVIDIA driver
installs; no toolkit): allocate MIB MiB of device memory, touch it, then
keep the SMs busy (matrix products, or a spinning PTX kernel compiled by the
driver) for SECONDS, and print what it did. Usage: load.py MIB SECONDS
"""

import ctypes
import sys
import time

PTX = b"""
.version 6.0
.target sm_50
.address_size 64
.visible .entry spin(.param .u64 n, .param .u64 out)
{
    .reg .pred %p;
    .reg .u64 %rd<6>;
    ld.param.u64 %rd1, [n];
    ld.param.u64 %rd4, [out];
    mov.u64 %rd2, 0;
    mov.u64 %rd3, 7;
LOOP:
    mul.lo.u64 %rd3, %rd3, 6364136223846793005;
    add.u64 %rd3, %rd3, 1442695040888963407;
    add.u64 %rd2, %rd2, 1;
    setp.lt.u64 %p, %rd2, %rd1;
    @%p bra LOOP;
    st.global.u64 [%rd4], %rd3;
    ret;
}
"""


def check(r, what):
    if r != 0:
        sys.exit(f"{what}: CUDA error {r}")


def with_torch(mib, seconds):
    """The same job with PyTorch, where it is installed (the issue's job)."""
    import torch

    held = torch.ones(mib << 20, dtype=torch.uint8, device="cuda")
    a = torch.randn(4096, 4096, device="cuda")
    print(f"holding {mib} MiB (PyTorch); multiplying for {seconds} s", flush=True)
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        a = torch.tanh(a @ a)
        torch.cuda.synchronize()
        n += 1
    print(f"done: {n} products, {int(held.sum().item())} bytes held", flush=True)
    time.sleep(0.5)


def main():
    mib, seconds = int(sys.argv[1]), float(sys.argv[2])
    try:
        import torch  # noqa: F401

        if torch.cuda.is_available():
            return with_torch(mib, seconds)
    except ImportError:
        pass
    cuda = ctypes.CDLL("libcuda.so.1")
    check(cuda.cuInit(0), "cuInit")
    dev = ctypes.c_int()
    check(cuda.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
    ctx = ctypes.c_void_p()
    check(cuda.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev), "cuCtxCreate")
    ptr = ctypes.c_uint64()
    size = mib << 20
    check(cuda.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(size)), "cuMemAlloc")
    check(cuda.cuMemsetD8_v2(ptr, ctypes.c_ubyte(1), ctypes.c_size_t(size)), "cuMemset")
    module = ctypes.c_void_p()
    check(cuda.cuModuleLoadData(ctypes.byref(module), PTX), "cuModuleLoadData")
    fn = ctypes.c_void_p()
    check(cuda.cuModuleGetFunction(ctypes.byref(fn), module, b"spin"), "cuModuleGetFunction")
    sms = ctypes.c_int()
    check(cuda.cuDeviceGetAttribute(ctypes.byref(sms), 16, dev), "SM count")  # MULTIPROCESSOR_COUNT
    out = ctypes.c_uint64()
    check(cuda.cuMemAlloc_v2(ctypes.byref(out), ctypes.c_size_t(8)), "cuMemAlloc out")
    n = ctypes.c_uint64(2_000_000)
    args = (ctypes.c_void_p * 2)(
        ctypes.cast(ctypes.byref(n), ctypes.c_void_p), ctypes.cast(ctypes.byref(out), ctypes.c_void_p)
    )
    print(f"holding {mib} MiB; spinning on {sms.value} SMs for {seconds} s", flush=True)
    end = time.monotonic() + seconds
    launches = 0
    while time.monotonic() < end:
        check(
            cuda.cuLaunchKernel(fn, sms.value * 8, 1, 1, 256, 1, 1, 0, None, args, None),
            "cuLaunchKernel",
        )
        check(cuda.cuCtxSynchronize(), "cuCtxSynchronize")
        launches += 1
    print(f"done: {launches} launches", flush=True)
    time.sleep(0.5)


main()
