"""DDP's rendezvous on the node's address, not on every interface (docs/reliability.md, *What listens*).

Ray Train's `TorchConfig` lets PyTorch's `env://` rendezvous start the process group's key-value
store (`TCPStore`) on rank 0, and that store listens on the wildcard address: on the embedded
Ray, whose servers are all on 127.0.0.1, it was the one listener reachable from the network (and
it has no authentication). Here rank 0 binds the store's socket to its own node address (the one
every rank connects to: 127.0.0.1 on the embedded Ray, the node's IP on a cluster) and hands it to
the store; on a loopback node gloo and NCCL are kept on the loopback interface as well."""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import ray
import torch.distributed as dist
from ray.train.torch.config import TorchConfig, _set_torch_distributed_env_vars, _TorchBackend

_STORE: list = []      # rank 0's store, kept alive in its worker process while the group lives


@dataclass
class BoundTorchConfig(TorchConfig):
    """`TorchConfig` whose rendezvous store listens on the node address only."""

    @property
    def backend_cls(self):
        return _BoundBackend


class _BoundBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config: BoundTorchConfig):
        addr, port = worker_group.execute_single(0, _serve_store, len(worker_group), backend_config.timeout_s)
        worker_group.execute(_set_torch_distributed_env_vars)      # LOCAL_RANK, RANK, ... as Ray sets them
        ray.get([worker_group.execute_single_async(rank, _join, backend_config.backend, addr, port, rank,
                                                   len(worker_group), backend_config.timeout_s)
                 for rank in range(len(worker_group))])

    def on_shutdown(self, worker_group, backend_config):
        super().on_shutdown(worker_group, backend_config)
        worker_group.execute_single(0, _release)


def _serve_store(world_size: int, timeout_s: int) -> tuple[str, int]:
    """On rank 0: the store, listening on this node's address; returns (address, port)."""
    addr = ray.util.get_node_ip_address()
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((addr, 0))
    sock.listen(max(128, world_size))
    port = sock.getsockname()[1]
    _STORE[:] = [sock, dist.TCPStore(addr, port, world_size, True, datetime.timedelta(seconds=timeout_s),
                                     wait_for_workers=False, master_listen_fd=sock.fileno())]
    return addr, port


def _release() -> None:
    """On rank 0, once the group is gone: drop the store and its socket (a module function, so it is
    pickled by reference and runs on the worker's own `_STORE`). Ray keeps a 1-worker group to the
    end of the process; its store stays with it."""
    if not dist.is_initialized():
        _STORE.clear()


def _join(backend: str, addr: str, port: int, rank: int, world_size: int, timeout_s: int) -> None:
    timeout = datetime.timedelta(seconds=timeout_s)
    os.environ.update(MASTER_ADDR=addr, MASTER_PORT=str(port))
    loopback = [name for _, name in socket.if_nameindex() if name.startswith("lo")]
    if addr in ("127.0.0.1", "::1") and loopback:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback[0])
        os.environ.setdefault("NCCL_SOCKET_IFNAME", loopback[0])
    store = _STORE[1] if rank == 0 else dist.TCPStore(addr, port, world_size, False, timeout)
    dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
