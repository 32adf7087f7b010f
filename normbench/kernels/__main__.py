"""`python -m normbench.kernels`: build (or find) the kernels now, as `make` does, and say where."""

from normbench.kernels import build, fused_bn_pool

if __name__ == "__main__":
    error = fused_bn_pool.ensure_built()
    if error is None:
        print(f"fused CPU kernel: ready ({build.host_isa()}, {build.build_folder(fused_bn_pool.SPEC)})")
    else:
        print(f"fused CPU kernel: unavailable: {error}")
