"""A stand-in for a QickSoc served over Pyro4, so the real-hardware path (nameserver lookup,
proxy, qick's own acquire loop over the network) runs without a board:

    python -m labd.hardware.simulated_soc --ns-host 127.0.0.1 --ns-port 8888 --name myqick

It implements the board calls qick's ``acquire()`` makes and streams accumulated IQ data:
a resonance across the sweep points plus noise. It knows nothing of the physics of a
particular experiment; the mock board (simulated.py) is the one for physics."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import Pyro4

from . import load_soccfg_dict


class SimulatedSoc:
    def __init__(self, soccfg: dict, seed: int | None = None, delay_s: float = 0.0) -> None:
        self._cfg = soccfg
        self._rng = np.random.default_rng(seed)
        self._delay = delay_s
        self._lengths: dict[int, int] = {}
        self._stream: list = []
        self.calls: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def get_cfg(self) -> dict:
        return self._cfg

    def get_calls(self) -> dict[str, int]:
        return dict(self.calls)

    # configuration calls: accepted and counted
    def start_src(self, src): self._count("start_src")
    def stop_tproc(self, lazy=False): self._count("stop_tproc")
    def start_tproc(self): self._count("start_tproc")
    def load_envelope(self, ch, data, addr): self._count("load_envelope")
    def load_weights(self, ch, data): self._count("load_weights")
    def set_nyquist(self, ch, nqz, force=False): self._count("set_nyquist")
    def set_mixer_freq(self, ch, f, ro_ch=None, phase_reset=True, fullscale=False):
        self._count("set_mixer_freq")
    def config_mux_gen(self, ch, tones): self._count("config_mux_gen")
    def configure_readout(self, ch, ro_regs): self._count("configure_readout")
    def config_mux_readout(self, pfbpath, cfgs, sel=None): self._count("config_mux_readout")
    def load_bin_program(self, binprog, load_mem=True): self._count("load_bin_program")
    def reload_mem(self): self._count("reload_mem")
    def clear_tproc_counter(self, addr=None): self._count("clear_tproc_counter")
    def prepare_round(self): self._count("prepare_round")
    def cleanup_round(self): self._count("cleanup_round")
    def config_buf(self, ch, address=0, length=100): self._count("config_buf")
    def enable_buf(self, ch, enable_avg=True, enable_buf=True): self._count("enable_buf")

    def config_avg(self, ch, address=0, length=1, edge_counting=False, high_threshold=0,
                   low_threshold=0):
        self._lengths[ch] = int(length)

    def start_readout(self, total_shots, counter_addr=1, ch_list=None, reads_per_shot=1,
                      stride=None):
        """Simulate the whole round at once and queue it for poll_data."""
        self._count("start_readout")
        ch_list = list(ch_list or [0])
        reads = reads_per_shot if isinstance(reads_per_shot, list) else [reads_per_shot] * len(ch_list)
        if self._delay:
            time.sleep(self._delay)
        data = []
        for ch, nreads in zip(ch_list, reads):
            n = int(total_shots)
            x = np.linspace(-1, 1, max(n, 1))
            signal = 1 - 0.8 / (1 + (x / 0.1) ** 2)
            iq = np.stack([signal, 0.2 * signal], axis=-1)
            iq = np.repeat(iq, nreads, axis=0) + self._rng.normal(0, 0.5, (n * nreads, 2))
            data.append(np.round(iq * self._lengths.get(ch, 1)).astype(np.int64))
        self._stream = [(int(total_shots), (data, {}))]

    def poll_data(self, totaltime=0.1, timeout=None):
        out, self._stream = self._stream, []
        return out


def serve(soccfg: dict, ns_host: str, ns_port: int, name: str, host: str = "127.0.0.1",
          delay_s: float = 0.0) -> None:
    Pyro4.config.REQUIRE_EXPOSE = False
    Pyro4.config.SERIALIZER = "pickle"
    Pyro4.config.SERIALIZERS_ACCEPTED = {"pickle"}
    Pyro4.config.PICKLE_PROTOCOL_VERSION = 4
    ns = Pyro4.locateNS(host=ns_host, port=ns_port)
    daemon = Pyro4.Daemon(host=host)
    uri = daemon.register(SimulatedSoc(soccfg, delay_s=delay_s))
    ns.register(name, uri)
    print(f"simulated soc {name!r} at {uri}", flush=True)
    daemon.requestLoop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ns-host", default="127.0.0.1")
    ap.add_argument("--ns-port", type=int, default=8888)
    ap.add_argument("--name", default="myqick")
    ap.add_argument("--host", default="127.0.0.1", help="address to serve on")
    ap.add_argument("--soccfg", type=Path, help="soccfg JSON (default: shipped ZCU216)")
    ap.add_argument("--delay", type=float, default=0.0, help="seconds per round")
    a = ap.parse_args()
    serve(load_soccfg_dict(a.soccfg), a.ns_host, a.ns_port, a.name, a.host, a.delay)


if __name__ == "__main__":
    main()
