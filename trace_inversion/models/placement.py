"""GPU placement for local engines: distilabel's ``CudaDevicePlacementMixin``, made safe
on machines without NVIDIA's management library.

distilabel assigns each local LLM of a pipeline its own CUDA devices (a lock file maps
``<step>-replica-<k>`` to devices; ``StepResources(gpus=)`` says how many) and sets
``CUDA_VISIBLE_DEVICES`` in the step's process before the engine starts. Its ``load``
raises ``ImportError`` when ``pynvml`` is missing and fails on a machine where NVML cannot
start (a CPU machine): there, placement is skipped (nothing to place).
"""

from __future__ import annotations

from distilabel.models.mixins.cuda_device_placement import CudaDevicePlacementMixin


def gpu_count() -> int:
    """NVIDIA GPUs NVML sees (0 without pynvml or a driver); never initialises CUDA."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetCount())
    except Exception:
        return 0


def place(llm: CudaDevicePlacementMixin) -> None:
    """Assign the LLM its devices (call in ``load``, before torch or vLLM start)."""
    if llm.disable_cuda_device_placement:
        return
    if llm._llm_identifier is None:
        # not inside a distilabel step (evaluation, a verifier's judge): no claim in the
        # pipeline's device map, which nothing would release; the process's own devices
        if llm.cuda_devices == "auto":
            llm.cuda_devices = []
        return
    if gpu_count() == 0:
        if llm.cuda_devices == "auto":
            llm.cuda_devices = []
        return
    CudaDevicePlacementMixin.load(llm)


def release(llm: CudaDevicePlacementMixin) -> None:
    if not llm.disable_cuda_device_placement and llm._llm_identifier is not None and gpu_count():
        CudaDevicePlacementMixin.unload(llm)
