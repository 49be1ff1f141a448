"""Greedy decoding of many questions about many volumes at once, each volume's prefix KV held once.

A volume's prompt is a long shared prefix (instruction + every slice) and, per question, a short
suffix. `prefix_batch.encode` splits them; here:

- the prefix runs once per volume through the model's own forward (vision tower + language model,
  so Gemma 3's bidirectional image attention and Qwen2.5-VL's M-RoPE are transformers' code) into a
  `DynamicCache`, whose per-layer keys/values are copied into this volume's *slot* of a static
  prefix store: one copy per volume, never one per question;
- the questions run as *rows* of a static (slots x rows) grid; each row has its own KV store for
  its suffix and answer tokens;
- suffix prefill and decode steps run transformers' own text model (embeddings, norms, RoPE,
  projections, MLP) with this module's attention function (registered in transformers'
  `AttentionInterface` and switched on for these calls only). It attends each row to its slot's
  prefix keys and to its own keys, and combines the two softmax parts exactly (log-sum-exp): the
  result equals attention over the concatenation, and the tests check the greedy tokens equal
  `model.generate` on the full prompt;
- rows finish on their own (EOS, their own token cap); a slot whose rows are all done takes the
  next volume while the others keep decoding (continuous batching). Volumes with more questions
  than a slot has rows take several slots, the prefix computed once and copied;
- on CUDA the decode step (every slot, one token per row, static shapes) is captured as a CUDA
  graph and replayed; split-K splits the long prefix products into chunks (`split_k` keys).

Masks come from sequence indices, not buffer positions: a prefix key at index i and a suffix or
answer token at slot t of a row (sequence index P + t, P its volume's prefix length) obey causality
and, on Gemma's sliding layers, `key > query - window`, exactly as transformers' masks do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch

ATTENTION = "ctsvqa_shared_prefix"


@dataclass
class Decoded:
    tokens: list[int]             # generated ids, EOS included when it stopped there
    stopped: str                  # 'eos' | 'max_new_tokens'


@dataclass(frozen=True)
class GreedySettings:
    max_new_tokens: int
    min_new_tokens: int = 0
    repetition_penalty: float = 1.0
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0


@dataclass(frozen=True)
class EngineSettings:
    """How the work is laid out on the device; none of it changes the math (it can change bf16
    rounding, so the adapter puts it into the run identity)."""
    slots: int = 4                # volumes (or volume chunks) decoded together
    rows: int = 6                 # questions per slot
    split_k: int = 0              # >0: prefix P@V products in chunks of this many keys (long prefixes)
    cuda_graph: bool = False      # capture the decode step (CUDA only)


@dataclass
class Job:
    """One volume: its encoded prompts (prefix_batch.Encoded) and each question's token cap."""
    key: Any
    encoded: Any
    max_new: list[int]
    error: str | None = None      # set by the producer when the volume could not be encoded
    offset: int = 0               # position id minus sequence index (Qwen's M-RoPE delta), set at prefill


@dataclass
class Timing:
    prefix: float = 0.0           # vision tower + prefix prefill (transformers' forward)
    suffix: float = 0.0           # suffix prefills
    decode: float = 0.0           # decode steps and token selection
    wait: float = 0.0             # waiting for the next encoded volume (the CPU side fell behind)
    steps: int = 0
    graph: bool = False
    # (what, job key, start, end) from time.perf_counter, when a benchmark asks for them (a list):
    # "prepare" (a producer thread), "wait", "load" (vision + prefix), "suffix", "decode" (one step)
    events: list | None = None

    def event(self, what: str, key, start: float, end: float | None = None) -> None:
        if self.events is not None:
            self.events.append((what, key, start, time.perf_counter() if end is None else end))

    def as_dict(self) -> dict:
        return {"prefix_seconds": round(self.prefix, 4), "suffix_seconds": round(self.suffix, 4),
                "decode_seconds": round(self.decode, 4), "wait_seconds": round(self.wait, 4),
                "decode_steps": self.steps, "cuda_graph": self.graph}


# -- attention ------------------------------------------------------------------------------------

def shared_prefix_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                            sliding_window=None, **kwargs):
    """query (Bw, H, S, hd) for the rows of slots [s0, s1); key/value: those rows' own stores
    (Bw, kvh, T, hd) as `SharedKV.update` returned them. Returns (Bw, S, H, hd)."""
    st: SharedKV = kwargs["shared_kv"]
    layer = module.layer_idx
    s0, s1 = st.window
    nw, R = s1 - s0, st.rows
    Bw, H, S, hd = query.shape
    kvh = key.shape[1]
    g = H // kvh
    cap = getattr(module, "attn_logit_softcapping", None)
    kind = "sliding" if st.sliding[layer] else "full"
    ninf = float("-inf")

    def capped(x):
        return torch.tanh(x / cap) * cap if cap else x

    # prefix part: the slot's R rows (x g heads x S tokens) share one product with its keys
    pk, pv = st.pk[layer][s0:s1], st.pv[layer][s0:s1]
    L = pk.shape[2]
    qv = query.reshape(nw, R, kvh, g, S, hd).permute(0, 2, 1, 3, 4, 5).reshape(nw, kvh, R * g * S, hd)
    sp = capped(torch.matmul(qv, pk.transpose(-1, -2)).float() * scaling)
    sp = sp.view(nw, kvh, R, g, S, L).masked_fill(st.prefix_hidden[kind], ninf).view(nw, kvh, R * g * S, L)
    mp = sp.amax(-1, keepdim=True)
    mp = torch.where(torch.isfinite(mp), mp, torch.zeros_like(mp))      # a row with no prefix key (empty slot)
    ep = torch.exp(sp - mp)
    lp = ep.sum(-1, keepdim=True)
    if kind == "full" and st.split_k and L > st.split_k:
        n = L // st.split_k                                              # the store is padded to chunks
        epc = ep.to(pv.dtype).view(nw, kvh, R * g * S, n, st.split_k).transpose(2, 3)
        op = torch.matmul(epc, pv.view(nw, kvh, n, st.split_k, hd)).float().sum(2)
    else:
        op = torch.matmul(ep.to(pv.dtype), pv).float()
    op = op.view(nw, kvh, R, g * S, hd).transpose(1, 2).reshape(Bw, kvh, g * S, hd)
    mp = mp.view(nw, kvh, R, g * S, 1).transpose(1, 2).reshape(Bw, kvh, g * S, 1)
    lp = lp.view(nw, kvh, R, g * S, 1).transpose(1, 2).reshape(Bw, kvh, g * S, 1)

    # the row's own part: its suffix and answer tokens so far
    T = key.shape[2]
    qs = query.reshape(Bw, kvh, g * S, hd)
    ss = capped(torch.matmul(qs, key.transpose(-1, -2)).float() * scaling)
    ss = ss.view(Bw, kvh, g, S, T).masked_fill(st.own_hidden[kind], ninf).view(Bw, kvh, g * S, T)
    ms = ss.amax(-1, keepdim=True)                                      # finite: a token sees itself
    es = torch.exp(ss - ms)
    ls = es.sum(-1, keepdim=True)
    os_ = torch.matmul(es.to(value.dtype), value).float()

    m = torch.maximum(mp, ms)
    ap, as_ = torch.exp(mp - m), torch.exp(ms - m)
    out = (op * ap + os_ * as_) / (lp * ap + ls * as_)
    return out.to(query.dtype).reshape(Bw, H, S, hd).transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface

    if ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTENTION, shared_prefix_attention)


class SharedKV:
    """The static stores and the per-call state the attention function reads. Passed to
    transformers as the cache (`update`) and as the `shared_kv` keyword, which reaches the
    attention function through the layers' **kwargs."""

    def __init__(self, text_config, slots: int, rows: int, prefix_len: int, own_len: int, split_k: int,
                 device, dtype):
        layer_types = list(text_config.layer_types)
        window = getattr(text_config, "sliding_window", None)
        self.sliding = [t == "sliding_attention" and window is not None for t in layer_types]
        self.window_size = window
        self.slots, self.rows, self.T = slots, rows, own_len
        self.split_k = split_k
        kvh = text_config.num_key_value_heads
        hd = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
        full_len = prefix_len
        if split_k and prefix_len > split_k:
            full_len = -(-prefix_len // split_k) * split_k
        self.lengths = {"full": full_len, "sliding": min(window - 1, prefix_len) if window else 0}
        B = slots * rows
        z = lambda *s: torch.zeros(*s, device=device, dtype=dtype)  # noqa: E731
        self.pk = [z(slots, kvh, self.lengths["sliding" if s else "full"], hd) for s in self.sliding]
        self.pv = [z(slots, kvh, self.lengths["sliding" if s else "full"], hd) for s in self.sliding]
        self.sk = [z(B, kvh, own_len, hd) for _ in self.sliding]
        self.sv = [z(B, kvh, own_len, hd) for _ in self.sliding]
        # sequence index of each stored prefix key (-1: none), and of each slot's first own token
        self.pidx = {k: torch.full((slots, n), -1, dtype=torch.long, device=device) for k, n in self.lengths.items()}
        self.base = torch.zeros(slots, dtype=torch.long, device=device)
        self.t0 = torch.zeros(B, dtype=torch.long, device=device)     # own slot of each row's first query token
        self.window = (0, slots)
        self.S = 1
        self.prefix_hidden: dict[str, torch.Tensor] = {}    # True: the key is not visible
        self.own_hidden: dict[str, torch.Tensor] = {}
        self.device = device

    def load_prefix(self, slot: int, cache, prefix_len: int) -> None:
        """Copy a volume's prefix keys/values (a DynamicCache after its prefix forward) into `slot`."""
        for layer, (k, v) in enumerate(_cache_tensors(cache)):
            kind = "sliding" if self.sliding[layer] else "full"
            n = min(self.lengths[kind], prefix_len)
            if k.shape[2] < n:
                raise RuntimeError(f"layer {layer} of the prefix cache holds {k.shape[2]} keys, {n} needed")
            self.pk[layer][slot].zero_()
            self.pv[layer][slot].zero_()
            self.pk[layer][slot, :, :n].copy_(k[0, :, -n:])
            self.pv[layer][slot, :, :n].copy_(v[0, :, -n:])
        for kind, length in self.lengths.items():
            n = min(length, prefix_len)
            idx = self.pidx[kind][slot]
            idx.fill_(-1)
            idx[:n] = torch.arange(prefix_len - n, prefix_len, device=self.device)
        self.base[slot] = prefix_len

    def copy_slot(self, src: int, dst: int) -> None:
        for layer in range(len(self.sliding)):
            self.pk[layer][dst].copy_(self.pk[layer][src])
            self.pv[layer][dst].copy_(self.pv[layer][src])
        for idx in self.pidx.values():
            idx[dst].copy_(idx[src])
        self.base[dst] = self.base[src]

    def prepare(self, window: tuple[int, int], S: int) -> None:
        """Masks for a call on slots `window` with S query tokens per row (no host sync: graph-safe)."""
        self.window, self.S = window, S
        s0, s1 = window
        nw, R = s1 - s0, self.rows
        t = self.t0[s0 * R:s1 * R].unsqueeze(1) + torch.arange(S, device=self.device)     # (Bw, S) own slots
        j = torch.arange(self.T, device=self.device)
        own = j.view(1, 1, -1) <= t.unsqueeze(-1)                                           # (Bw, S, T)
        q_seq = self.base[s0:s1].view(nw, 1, 1) + t.view(nw, R, S)                         # (nw, R, S)
        self.own_hidden["full"] = ~own.view(-1, 1, 1, S, self.T)
        full = self.pidx["full"][s0:s1] >= 0
        self.prefix_hidden["full"] = ~full.view(nw, 1, 1, 1, 1, -1)
        if self.window_size:
            W = self.window_size
            self.own_hidden["sliding"] = ~(own & (j.view(1, 1, -1) > t.unsqueeze(-1) - W)).view(-1, 1, 1, S, self.T)
            pidx = self.pidx["sliding"][s0:s1].view(nw, 1, 1, -1)
            ok = (pidx >= 0) & (pidx > q_seq.unsqueeze(-1) - W)                              # (nw, R, S, L)
            self.prefix_hidden["sliding"] = ~ok.view(nw, 1, R, 1, S, -1)

    # transformers' cache protocol (the part the attention layers call)
    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        s0, s1 = self.window
        r0, r1 = s0 * self.rows, s1 * self.rows
        Bw, kvh, S, _ = key_states.shape
        t = self.t0[r0:r1].unsqueeze(1) + torch.arange(S, device=self.device)             # (Bw, S)
        bi = torch.arange(Bw, device=self.device).view(Bw, 1, 1)
        hi = torch.arange(kvh, device=self.device).view(1, kvh, 1)
        ti = t.clamp(max=self.T - 1).view(Bw, 1, S)
        sk, sv = self.sk[layer_idx][r0:r1], self.sv[layer_idx][r0:r1]
        sk[bi, hi, ti] = key_states
        sv[bi, hi, ti] = value_states
        return sk, sv

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0


# -- the prefix prefill's compiled layers --------------------------------------------------------------

def compile_prefill(language_model, on: bool) -> None:
    """Give each decoder layer a compiled forward for the prefix prefill (or take it away).

    Only the prefix uses it (`prefill_layers`): it is one long, fixed-shape call per volume, where
    fusing the norms, RoPE and MLP elementwise work pays (MedGemma: 0.47 -> 0.30 s of language model
    per 85-slice volume on one H200, bench/gpu_prefill_levers.py). Suffix prefills and decode steps
    keep the eager layers: their shapes vary and the decode step is a CUDA graph already."""
    layers = list(getattr(language_model, "layers", []))
    if not on:
        for layer in layers:
            layer.__dict__.pop("_ctsvqa_prefill_forward", None)
        return
    # Each layer is one cache entry of the same code (its index and attention type are constants),
    # twice over when a second prefix length makes the shapes dynamic.
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 4 * len(layers)))
    for layer in layers:
        if "_ctsvqa_prefill_forward" not in layer.__dict__:
            layer.__dict__["_ctsvqa_prefill_forward"] = torch.compile(layer.forward)


@contextlib.contextmanager
def prefill_layers(language_model):
    """Within the block the decoder layers run their compiled prefill forward, where they have one."""
    swapped = []
    for layer in getattr(language_model, "layers", []):
        fast = layer.__dict__.get("_ctsvqa_prefill_forward")
        if fast is not None:
            layer.__dict__["forward"] = fast
            swapped.append(layer)
    try:
        yield
    finally:
        for layer in swapped:
            layer.__dict__.pop("forward", None)


def _cache_tensors(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


class _Switch:
    """Use our attention in the text model for the duration of a call (the prefix forward keeps the
    configured implementation: sdpa, eager or flex)."""

    def __init__(self, config):
        self.config = config

    def __enter__(self):
        self.before = self.config._attn_implementation_internal
        self.config._attn_implementation_internal = ATTENTION

    def __exit__(self, *exc):
        self.config._attn_implementation_internal = self.before


# -- the engine ----------------------------------------------------------------------------------

@dataclass
class _Row:
    job: int                      # index into the jobs list
    question: int                 # index into the job's suffixes
    max_new: int
    tokens: list[int] = field(default_factory=list)
    stopped: str | None = None


class SharedPrefixEngine:
    """Owns the stores for one (slots, rows, prefix length, own length) shape; reusable across calls
    with shapes that fit (the adapter keeps one)."""

    def __init__(self, model, family, settings: EngineSettings):
        _register()
        self.model, self.family, self.settings = model, family, settings
        self.lm = model.model.language_model
        self.text_config = self.lm.config
        self.device, self.dtype = model.device, model.dtype
        self.prefix_len = self.own_len = 0
        self.kv: SharedKV | None = None
        B = settings.slots * settings.rows
        self.ids = torch.zeros(B, 1, dtype=torch.long, device=self.device)
        self.offset = torch.zeros(B, 1, dtype=torch.long, device=self.device)   # position id - sequence index
        self.graph = None
        self.graph_failed: str | None = None
        self.masks = {t: None for t in set(self.text_config.layer_types)}

    def fits(self, prefix_len: int, own_len: int) -> bool:
        return self.kv is not None and prefix_len <= self.prefix_len and own_len <= self.own_len

    def resize(self, prefix_len: int, own_len: int) -> None:
        """New stores for longer prefixes or answers (rounded up, so nearby sizes reuse them)."""
        self.prefix_len = max(self.prefix_len, -(-prefix_len // 256) * 256)
        self.own_len = max(self.own_len, -(-own_len // 16) * 16)
        self.kv = self.graph = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.kv = SharedKV(self.text_config, self.settings.slots, self.settings.rows, self.prefix_len, self.own_len,
                           self.settings.split_k, self.device, self.dtype)

    # one forward of the text model over slots `window`, S tokens per row, our attention
    def _forward(self, ids: torch.Tensor, window: tuple[int, int], S: int, last: torch.Tensor | None = None):
        kv = self.kv
        kv.prepare(window, S)
        r0, r1 = window[0] * kv.rows, window[1] * kv.rows
        seq = (kv.base[window[0]:window[1]].repeat_interleave(kv.rows).unsqueeze(1) + kv.t0[r0:r1].unsqueeze(1)
               + torch.arange(S, device=self.device))
        positions = self.family.position_ids(self.offset[r0:r1], seq)
        with _Switch(self.text_config):
            hidden = self.lm(input_ids=ids, position_ids=positions, attention_mask=self.masks, cache=kv,
                             use_cache=True, shared_kv=kv).last_hidden_state
        if last is None:
            hidden = hidden[:, -1]
        else:
            hidden = hidden[torch.arange(hidden.shape[0], device=self.device), last]
        return self.model.lm_head(hidden).float()

    def _decode_logits(self) -> torch.Tensor:
        if self.graph is not None:
            self.graph.replay()
            return self.graph_logits
        return self._forward(self.ids, (0, self.kv.slots), 1)

    def _capture(self) -> None:
        if not (self.settings.cuda_graph and self.device.type == "cuda") or self.graph is not None \
                or self.graph_failed:
            return
        try:
            t0 = self.kv.t0.clone()
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self._forward(self.ids, (0, self.kv.slots), 1)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.graph_logits = self._forward(self.ids, (0, self.kv.slots), 1)
            self.graph = graph
            self.kv.t0.copy_(t0)
        except Exception as exc:  # noqa: BLE001  (eager decoding gives the same tokens, only slower)
            self.graph = None
            self.graph_failed = f"{type(exc).__name__}: {exc}"

    def run(self, jobs: Iterable[Job], greedy: GreedySettings, timing: Timing | None = None) -> list[list[Decoded] | None]:
        """Answer every job; returns per job its Decoded list (None for a job with an error)."""
        results: list[list[Decoded] | None] = []
        for i, _job, decoded in self.stream(jobs, greedy, timing):
            results.extend([None] * (i + 1 - len(results)))
            results[i] = decoded
        return results

    @torch.inference_mode()
    def stream(self, jobs: Iterable[Job], greedy: GreedySettings,
               timing: Timing | None = None) -> Iterator[tuple[int, Job, list[Decoded] | None]]:
        """Answer every job, handing each back as it finishes: (its index in `jobs`, the job, its
        Decoded list, or None for a job with an error). Slots keep filling from `jobs` meanwhile, so
        a long stream runs at the rate of one long batch while every volume is returned (and can be
        stored) as soon as it is done."""
        timing = timing if timing is not None else Timing()
        R = self.settings.rows
        kv = self.kv
        cuda = self.device.type == "cuda"

        def sync():
            if cuda:
                torch.cuda.synchronize(self.device)

        B = self.settings.slots * R
        eos = torch.tensor(greedy.eos_token_ids or [-1], device=self.device)
        penalty = greedy.repetition_penalty
        seen = None
        if penalty != 1.0:
            seen = torch.zeros(B, self.model.lm_head.out_features, dtype=torch.bool, device=self.device)
        rows: list[_Row | None] = [None] * B
        count = torch.zeros(B, dtype=torch.long, device=self.device)     # tokens generated per row
        slot_job: list[int | None] = [None] * self.settings.slots
        results: list[list[Decoded] | None] = []
        completed: list[tuple[int, Job, list[Decoded] | None]] = []        # finished, not handed back yet
        job_list: list[Job] = []
        left: dict[int, int] = {}                                        # job -> rows not yet finished
        queue: deque = deque()                                           # (job index, question indices)
        source: Iterator[Job] = iter(jobs)
        prefix_caches: dict[int, Any] = {}                               # job -> (slot holding its prefix)
        fresh: list[int] = []                                            # slots loaded, suffixes not yet run

        def pull() -> bool:
            t = time.perf_counter()
            job = next(source, None)
            timing.wait += time.perf_counter() - t
            timing.event("wait", None if job is None else job.key, t)
            if job is None:
                return False
            i = len(job_list)
            job_list.append(job)
            results.append(None)
            if job.error is None and job.encoded.suffixes:
                qs = list(range(len(job.encoded.suffixes)))
                left[i] = len(qs)
                for c in range(0, len(qs), R):
                    queue.append((i, qs[c:c + R]))
            elif job.error is None:
                results[i] = []
                completed.append((i, job, []))
            else:
                completed.append((i, job, None))
            return True

        def select(logits: torch.Tensor, active: torch.Tensor, sl: slice = slice(None)) -> torch.Tensor:
            """transformers' greedy search with its repetition penalty and min_new_tokens processors."""
            scores = logits
            if seen is not None:
                scores = torch.where(seen[sl], torch.where(scores < 0, scores * penalty, scores / penalty), scores)
            if greedy.min_new_tokens and greedy.eos_token_ids:
                ban = (count[sl] < greedy.min_new_tokens).unsqueeze(1) & torch.isin(
                    torch.arange(scores.shape[1], device=self.device), eos).unsqueeze(0)
                scores = scores.masked_fill(ban, float("-inf"))
            nxt = scores.argmax(dim=-1)
            return torch.where(active, nxt, torch.full_like(nxt, greedy.pad_token_id))

        def accept(nxt: torch.Tensor, active_rows: list[int]) -> None:
            values = nxt.tolist()                                         # one host sync per step
            for b in active_rows:
                row = rows[b]
                t = values[b]
                row.tokens.append(t)
                if t in greedy.eos_token_ids:
                    row.stopped = "eos"
                elif len(row.tokens) >= row.max_new:
                    row.stopped = "max_new_tokens"
            if seen is not None:
                seen[torch.arange(B, device=self.device), nxt] = True
            count.add_(1)
            self.ids.copy_(nxt.view(B, 1))

        def finish_rows() -> None:
            for b, row in enumerate(rows):
                if row is not None and row.stopped is not None:
                    rows[b] = None
                    left[row.job] -= 1
                    done = results[row.job]
                    if done is None:
                        done = results[row.job] = [None] * len(job_list[row.job].encoded.suffixes)
                    done[row.question] = Decoded(row.tokens, row.stopped)
                    if left[row.job] == 0:
                        completed.append((row.job, job_list[row.job], done))
            for s in range(self.settings.slots):
                if slot_job[s] is not None and all(rows[b] is None for b in range(s * R, (s + 1) * R)):
                    slot_job[s] = None

        def load(slot: int, job_i: int, questions: list[int]) -> None:
            job = job_list[job_i]
            enc = job.encoded
            P = enc.prefix_len
            if job_i in prefix_caches:
                kv.copy_slot(prefix_caches[job_i], slot)
            else:
                sync()
                t = time.perf_counter()
                if getattr(enc, "ready", None) is not None:          # made on the producer's stream
                    torch.cuda.current_stream(self.device).wait_event(enc.ready)
                # pinned tensors (staged by the producer) copy without blocking the host
                prefix = {k: (v.to(self.device, self.dtype, non_blocking=True) if v.is_floating_point()
                              else v.to(self.device, non_blocking=True)) for k, v in enc.prefix.items()}
                from transformers import DynamicCache

                cache = DynamicCache(config=self.model.config.get_text_config())
                with prefill_layers(self.lm):
                    offset = self.family.prefix_forward(self.model, prefix, cache)
                kv.load_prefix(slot, cache, P)
                del cache, prefix
                # the pixels are done with (a volume's float32 slices: ~0.8 GB at 85 x 896 px)
                job.encoded = enc = dataclasses.replace(enc, prefix={"input_ids": enc.prefix["input_ids"]})
                sync()
                timing.prefix += time.perf_counter() - t
                timing.event("load", job.key, t)
                job.offset = int(offset) if offset is not None else 0
                prefix_caches.clear()
                prefix_caches[job_i] = slot
            sl = slice(slot * R, (slot + 1) * R)
            self.offset[sl] = job.offset
            slot_job[slot] = job_i
            for r, q in enumerate(questions):
                rows[slot * R + r] = _Row(job_i, q, job.max_new[q])
            fresh.append(slot)

        def prefill(slots: list[int]) -> None:
            """The suffixes of freshly loaded slots in one forward over the slots between them; rows
            of other slots in that window ride along on pad tokens and keep their state (what they
            write lands at or after their next slot, which is written again before it is read)."""
            t = time.perf_counter()
            s0, s1 = min(slots), max(slots) + 1
            sl = slice(s0 * R, s1 * R)
            new = [b for s in slots for b in range(s * R, (s + 1) * R) if rows[b] is not None]
            suffix = {b: job_list[rows[b].job].encoded.suffixes[rows[b].question] for b in new}
            S = max(len(x) for x in suffix.values())
            ids = torch.full((s1 * R - s0 * R, S), greedy.pad_token_id, dtype=torch.long)
            last = torch.zeros(s1 * R - s0 * R, dtype=torch.long)
            fresh_mask = torch.zeros(B, dtype=torch.bool)
            lengths = torch.zeros(B, dtype=torch.long)
            for b, x in suffix.items():
                ids[b - s0 * R, :len(x)] = torch.tensor(x)
                last[b - s0 * R] = len(x) - 1
                fresh_mask[b] = True
                lengths[b] = len(x)
            fresh_slots = torch.zeros(B, dtype=torch.bool)
            for s in slots:
                fresh_slots[s * R:(s + 1) * R] = True
            ids, last = ids.to(self.device), last.to(self.device)
            fresh_mask, lengths, fresh_slots = (x.to(self.device) for x in (fresh_mask, lengths, fresh_slots))
            kv.t0.masked_fill_(fresh_slots, 0)
            count.masked_fill_(fresh_slots, 0)
            if seen is not None:
                seen[fresh_slots] = False
                for b, x in suffix.items():
                    enc = job_list[rows[b].job].encoded
                    seen[b, enc.prefix["input_ids"][0].to(self.device)] = True
                    seen[b, torch.tensor(x, device=self.device)] = True
            logits = self._forward(ids, (s0, s1), S, last=last)
            nxt = select(logits, fresh_mask[sl], sl)
            kv.t0.copy_(torch.where(fresh_slots, lengths.clamp(max=self.own_len - 1), kv.t0))
            values = nxt.tolist()
            for b in new:
                row = rows[b]
                v = values[b - s0 * R]
                row.tokens.append(v)
                if v in greedy.eos_token_ids:
                    row.stopped = "eos"
                elif len(row.tokens) >= row.max_new:
                    row.stopped = "max_new_tokens"
            if seen is not None:
                seen[torch.arange(s0 * R, s1 * R, device=self.device)[fresh_mask[sl]], nxt[fresh_mask[sl]]] = True
            count.masked_fill_(fresh_slots, 1)
            self.ids[sl, 0] = torch.where(fresh_mask[sl], nxt, self.ids[sl, 0])
            sync()
            timing.suffix += time.perf_counter() - t
            timing.event("suffix", None, t)

        def handed_back() -> Iterator[tuple[int, Job, list[Decoded] | None]]:
            while completed:
                done = completed.pop(0)
                job_list[done[0]] = results[done[0]] = None     # a run may be thousands of volumes long
                left.pop(done[0], None)
                yield done

        exhausted = False
        while True:
            # fill free slots
            while True:
                free = [s for s in range(self.settings.slots) if slot_job[s] is None]
                if not free:
                    break
                if not queue and not exhausted:
                    exhausted = not pull()
                    continue
                if not queue:
                    break
                job_i, questions = queue[0]
                job = job_list[job_i]
                need = (job.encoded.prefix_len,                   # the whole job's: its chunks share a shape
                        max(len(s) + m for s, m in zip(job.encoded.suffixes, job.max_new)))
                if not self.fits(*need):
                    if any(r is not None for r in rows):
                        break                             # let the slots drain, then grow the stores
                    self.resize(*need)
                    kv = self.kv
                    prefix_caches.clear()
                queue.popleft()
                load(free[0], job_i, questions)
            if fresh:
                prefill(fresh)
                fresh.clear()
                finish_rows()
            yield from handed_back()
            active_rows = [b for b, row in enumerate(rows) if row is not None]
            if not active_rows:
                if queue or not exhausted:
                    continue
                break
            self._capture()
            timing.graph = self.graph is not None
            t = time.perf_counter()
            logits = self._decode_logits()
            active = torch.zeros(B, dtype=torch.bool)
            active[active_rows] = True
            active = active.to(self.device)
            nxt = select(logits, active)
            kv.t0.copy_(torch.where(active, (kv.t0 + 1).clamp(max=self.own_len - 1), kv.t0))
            accept(nxt, active_rows)
            timing.decode += time.perf_counter() - t
            timing.event("decode", None, t)
            timing.steps += 1
            finish_rows()
            yield from handed_back()
        yield from handed_back()
