"""Many conversations on one engine: KV regions, prefill into a region, batched decode steps.

One static KV cache of shape (layers, agents, kv_heads, context, head_dim) holds one region per
agent. A request takes a free region (the one whose cached tokens share the longest prefix with
its prompt, else the least recently used), and the engine (agent/backends/engine.py) prefills it
exactly as it does for `vlagent run`: pointed at that region's slice of the cache and token record,
it reuses the prefix, encodes only new images, feeds the grammar's forced tokens with the prompt
and chooses the first token. Decoding is then batched here: one step feeds the last token of every
decoding request, runs the weight GEMMs once for all rows, and lets each row attend only to its
own region (an additive mask per row). Like the engine, a row feeds the tokens the grammar forces
after its last choice in the same step (up to FEED_WIDTH at once: a click reply is mostly forced
text), so a reply costs about as many steps as the model has real choices. Rows of idle regions
compute on scratch slots (the last FEED_WIDTH of their region, never part of a conversation) and
their result is dropped, so the step has one shape and, on CUDA, one graph per KV span and width.

A row's result depends only on its own tokens and region: the same request alone or among others
gets the same reply (tests/serve/test_serve.py holds this on the CPU in float32).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from agent.backends.engine import FEED_WIDTH, KV_BUCKET, WARMUP_REPLAYS, Engine, KVState, VisionCache
from agent.backends.engine_ops import attend, image_spans, post_attention, pre_attention
from agent.errors import VlagentError


@dataclass(eq=False)
class Region:
    index: int
    state: KVState = field(default_factory=KVState)  # what the region's KV holds (tokens, images)
    used: float = 0.0  # last use (least recently used goes first)
    busy: bool = False
    client: str | None = None  # the connection that used it last (an agent keeps its connection)

    @property
    def empty(self) -> bool:
        return not self.state.ids

    def clear(self) -> None:
        """Forget what the region holds: its KV is overwritten, never read."""
        self.state.clear()


@dataclass(eq=False)
class Row:
    """A request decoding in the batch: its region, the tokens chosen so far, its grammar."""
    region: Region
    out: list[int]
    delta: int  # rope position minus cache slot (images make them differ)
    matcher: object
    max_new: int
    stops: set
    done: bool = False
    feed: list[int] = field(default_factory=list)  # chosen or forced tokens whose KV is not in the region yet


class Batcher:
    def __init__(self, model, agents: int, context: int, *, vision_cache: int | None = None,
                 graphs: bool | None = None, options=None, private: bool = False):
        """private: a region is reused only by the conversation (`client`) that filled it (pick)."""
        import torch

        self.private = private
        self.torch = torch
        if agents < 1 or context < KV_BUCKET or context % KV_BUCKET:
            raise VlagentError(f"need at least one agent and a context of whole {KV_BUCKET}-token blocks, got {context}")
        # The engine gives the model code (fused weights, prefill, vision); its own cache is replaced
        # by one region at a time, so it is made with the smallest one. Its vision cache is the
        # server's, sized for every agent's history.
        self.vision = VisionCache(vision_cache or agents * 6)
        if options is None:
            from agent.backends.options import EngineOptions
            options = EngineOptions.from_env()
        self.engine = eng = Engine(model, max_context=1, graphs=False, vision_cache=self.vision,
                                   kv_shift=options.kv_shift, sdpa=options.sdpa)
        eng.k_cache = eng.v_cache = None
        self.agents, self.context = agents, context
        self.device, self.dtype = eng.device, eng.dtype
        self.H, self.KV, self.d = eng.heads, eng.kv_heads, eng.head_dim
        shape = (len(eng.layers), agents, self.KV, context, self.d)
        self.k = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.regions = [Region(i) for i in range(agents)]
        self.scratch = context - FEED_WIDTH  # idle rows write from here; conversations use slots below it
        # Static step inputs (the graphs read them in place), per row: the tokens it feeds (padded), the
        # slot of the first, the rope delta, which of them chooses the next token, the grammar mask.
        self._toks = torch.zeros((agents, FEED_WIDTH), dtype=torch.long, device=self.device)
        self._pos = torch.full((agents,), self.scratch, dtype=torch.long, device=self.device)
        self._delta = torch.zeros((agents,), dtype=torch.long, device=self.device)
        self._last = torch.zeros((agents,), dtype=torch.long, device=self.device)
        self._tok = torch.zeros((agents,), dtype=torch.long, device=self.device)  # the chosen tokens
        self._rows = torch.arange(agents, device=self.device)
        # Row r of the step writes slot _pos[r] of its own region: its first flat row of each KV head
        # in the cache viewed as (agents * kv_heads * context, head_dim).
        self._region_rows = (torch.arange(agents * self.KV, device=self.device) * context).view(agents, self.KV)
        self._arange = torch.arange(context, device=self.device)
        self.words = (eng.vocab + 31) // 32
        self._bitmask = torch.full((agents, self.words), -1, dtype=torch.int32, device=self.device)
        self._bits = torch.arange(32, dtype=torch.int32, device=self.device)
        pin = self.device.type == "cuda"
        self._host = torch.zeros((3, agents), dtype=torch.long, pin_memory=pin)  # pos, delta, last
        self._host_toks = torch.zeros((agents, FEED_WIDTH), dtype=torch.long, pin_memory=pin)
        self.bitmask_host = torch.full((agents, self.words), -1, dtype=torch.int32, pin_memory=pin)
        if graphs is None:  # serve_graphs off (VLAGENT_SERVE_GRAPHS=0): eager decode steps, to rule graphs out when debugging
            graphs = self.device.type == "cuda" and options.serve_graphs
        self.use_graphs = graphs
        self._graphs: dict[tuple[int, int], object] = {}  # (span, width) -> graph
        self._pool = self._stream = None
        self.rows: dict[int, Row] = {}  # region index -> the request decoding there
        self.peak_bytes = 0

    @property
    def vision_size(self) -> int:
        """Encoded screenshots the server keeps (all agents' histories)."""
        return self.vision.size

    # ---- regions

    def _point(self, r: Region):
        """Point the engine at a region: its slice of the cache and its record."""
        self.engine.attach(self.k[:, r.index], self.v[:, r.index], r.state, self.scratch)

    def prefix(self, r: Region, ids: list[int], keys: list[str]) -> int:
        """Tokens of `ids` whose KV region r already holds (the engine's own rule)."""
        if not r.state.ids:
            return 0
        self._point(r)
        return self.engine.prefix_len(ids, keys)

    def pick(self, ids: list[int], keys: list[str], client: str | None = None) -> Region | None:
        """The region a request takes, among the free ones: the one its connection used last (the
        same agent, also after its history evicted screenshots and the prefix got short); else one
        whose conversation the prompt continues (the longest prefix reaching past the region's first
        image: agents share the system prompt, which alone must not take another agent's region);
        else an empty one; else the least recently used.

        A private batcher skips the second rule and empties a region it takes from another
        conversation (its KV overwritten, never read): reusing another conversation's prefix would
        tell a client, through `cached_tokens` and the time saved, how much of another agent's prompt
        it guessed."""
        free = [r for r in self.regions if not r.busy]
        if not free:
            return None
        own = [r for r in free if client is not None and r.client == client]
        if own:
            return own[0]
        if not self.private:
            scored = [(self.prefix(r, ids, keys), r) for r in free if r.state.ids]
            continued = [(m, r) for m, r in scored if m > self._anchor(r)]
            if continued:
                return max(continued, key=lambda mr: mr[0])[1]
        empty = [r for r in free if r.empty]
        region = empty[0] if empty else min(free, key=lambda r: r.used)
        if self.private:
            region.clear()
        return region

    def _anchor(self, r: Region) -> int:
        """Where a region's own conversation starts to differ from others': its first image."""
        spans = image_spans(r.state.ids, self.engine.image_token)
        return spans[0][0] if spans else len(r.state.ids) // 2

    # ---- prefill: the engine's, in the request's region

    def prefill(self, r: Region, ids: list[int], images, max_new: int, stops: set, matcher) -> Row:
        """Prefill the prompt into region r and choose the first token (forced tokens included)."""
        eng = self.engine
        r.busy, r.used = True, time.monotonic()
        self._point(r)
        out: list[int] = []
        if matcher is not None:  # what the grammar forces before any choice (the reply's opening)
            self._force(matcher, out, lambda: len(out) >= max_new, stops)
        if len(out) < max_new and not (matcher is not None and matcher.is_terminated()):
            self._note_peak()  # the engine resets the high-water mark per call
            try:
                gen = eng.generate(ids + out, images, 1, stop_ids=stops, matcher=matcher)
            except BaseException:
                r.state.clear()  # a prefill cut short leaves the region's record unreliable
                raise
            out += gen.tokens
            self._note_peak(gen.timings)
        row = Row(r, out, eng.rope_delta, matcher, max_new, stops)
        row.done = self._done(row)
        return row

    def _force(self, matcher, out: list[int], done, stops: set, pending: list[int] | None = None):
        """Accept the tokens the grammar forces from here (the engine's rule: lone tokens, forced
        strings, a stop when nothing else is allowed), appending them to out (and pending)."""
        self.engine.take_forced(matcher, out, done, stops, pending)

    @staticmethod
    def _done(row: Row) -> bool:
        out = row.out
        return (bool(out) and out[-1] in row.stops) or len(out) >= row.max_new \
            or (row.matcher is not None and row.matcher.is_terminated())

    def release(self, row: Row):
        row.region.busy, row.region.used = False, time.monotonic()
        self.rows.pop(row.region.index, None)

    # ---- batched decode

    def step(self, rows: list[Row]):
        """One pass for every row: feed its last token and the tokens the grammar forces after it,
        choose the next (grammar-masked). A row the grammar finishes needs no pass at all."""
        torch = self.torch
        for row in rows:
            if not row.feed:
                row.feed = [row.out[-1]]
                if row.matcher is not None:
                    self._force(row.matcher, row.out, lambda row=row: self._done(row), row.stops, row.feed)
            row.done = self._done(row)
        rows = [row for row in rows if not row.done]
        if not rows:
            return
        width = 1 if all(len(row.feed) == 1 for row in rows) else FEED_WIDTH
        host, toks, mask = self._host.numpy(), self._host_toks.numpy(), self.bitmask_host
        host[0], host[1], host[2], toks[:] = self.scratch, 0, 0, 0
        mask.fill_(-1)
        span = KV_BUCKET
        fed = {}
        for row in rows:
            i, start = row.region.index, len(row.region.state.ids)
            fed[i] = feed = row.feed[:width]
            toks[i, :len(feed)] = feed
            host[0, i], host[1, i], host[2, i] = start, row.delta, len(feed) - 1
            if row.matcher is not None and len(row.feed) <= width:  # this pass makes the row's next choice
                row.matcher.fill_next_token_bitmask(mask, i)
            span = max(span, min(self.context, ((start + width - 1) // KV_BUCKET + 1) * KV_BUCKET))
        with torch.inference_mode():
            self._toks.copy_(self._host_toks, non_blocking=True)
            self._pos.copy_(self._host[0], non_blocking=True)
            self._delta.copy_(self._host[1], non_blocking=True)
            self._last.copy_(self._host[2], non_blocking=True)
            self._bitmask.copy_(mask, non_blocking=True)
            self._run(span, width)
            chosen = self._tok.tolist()
        self._note_peak()
        for row in rows:
            r = row.region
            r.state.ids.extend(fed[r.index])
            del row.feed[:width]
            if row.feed:  # a forced run longer than one pass: the rest goes next step
                continue
            tok = chosen[r.index]
            if row.matcher is not None and not row.matcher.accept_token(tok):
                raise VlagentError(f"grammar rejected token {tok}")  # a bug: the mask allowed it
            row.out.append(tok)
            row.done = self._done(row)

    def _decode(self, span: int, width: int):
        """The step on the static buffers: row r feeds _toks[r, :width] at slots _pos[r].. of its own
        region (padding past its run: those slots are rewritten before anything reads them) and
        chooses the token after its token _last[r]."""
        torch, eng = self.torch, self.engine
        lm, R, W, KV, d = eng.lm, self.agents, width, self.KV, self.d
        rep = self.H // KV
        x = lm.embed_tokens(self._toks[:, :W].reshape(1, R * W))
        slots = self._pos.view(R, 1) + self._arange[:W].view(1, W)  # (R, W)
        cos, sin = lm.rotary_emb(x, (slots + self._delta.view(R, 1)).view(1, 1, R * W).expand(3, 1, R * W))
        flat = (self._region_rows.view(R, KV, 1) + slots.view(R, 1, W)).view(-1)  # where each K/V row goes
        keep = self._arange[:span].view(1, 1, span) <= slots.view(R, W, 1)
        bias = torch.zeros((R, W, span), dtype=torch.float32, device=self.device).masked_fill(~keep, float("-inf"))
        bias = bias.view(R, 1, 1, W, span).expand(R, 1, rep, W, span).reshape(R, 1, rep * W, span)
        for i, w in enumerate(eng.layers):
            q, k, v = pre_attention(x, w["ln"], w["qkv"], w["qn"], w["kn"], cos, sin, eng.eps, self.H, KV, d)
            K, V = self.k[i], self.v[i]  # (agents, kv_heads, context, head_dim)
            K.view(-1, d).index_copy_(0, flat, k[0].view(KV, R, W, d).transpose(0, 1).reshape(R * KV * W, d))
            V.view(-1, d).index_copy_(0, flat, v[0].view(KV, R, W, d).transpose(0, 1).reshape(R * KV * W, d))
            # A KV head's query heads (x the row's tokens) as query rows of that row's own region.
            qg = q[0].view(KV, rep, R, W, d).permute(2, 0, 1, 3, 4).reshape(R, KV, rep * W, d)
            o = attend(qg, K[:, :, :span], V[:, :, :span], bias, d ** -0.5)
            o = o.view(R, KV, rep, W, d).permute(0, 3, 1, 2, 4).reshape(1, R * W, self.H * d)
            x = post_attention(x, o, w["o"], w["post"], w["gu"], w["down"], eng.eps, eng.inter)
        if W > 1:
            x = x.view(R, W, -1)[self._rows, self._last].view(1, R, -1)
        logits = eng.model.lm_head(lm.norm(x)).float().view(R, -1)
        allowed = ((self._bitmask.unsqueeze(-1) >> self._bits) & 1).view(R, -1)[:, : logits.shape[-1]].bool()
        self._tok.copy_(logits.masked_fill(~allowed, float("-inf")).argmax(-1))

    def _run(self, span: int, width: int):
        if not self.use_graphs:
            self._decode(span, width)
            return
        g = self._graphs.get((span, width)) or self._capture(span, width)
        g.replay()

    def _capture(self, span: int, width: int):
        """Capture the step for one span and width. Its inputs are reloaded before every replay, it
        writes only its output token, and the warm-up runs write only the KV slots the real step is
        about to write, so nothing needs saving."""
        torch = self.torch
        if self._pool is None:
            self._pool, self._stream = torch.cuda.graph_pool_handle(), torch.cuda.Stream()
        self._stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._stream):
            for _ in range(WARMUP_REPLAYS):
                self._decode(span, width)
        torch.cuda.current_stream().wait_stream(self._stream)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=self._pool, stream=self._stream):
            self._decode(span, width)
        self._graphs[(span, width)] = g
        return g

    def warmup(self):
        """Capture every span's and width's graph before the first request (idle rows only: scratch slots)."""
        if not self.use_graphs:
            return
        with self.torch.inference_mode():
            self._pos.fill_(self.scratch)
            self._bitmask.fill_(-1)
            for span in range(KV_BUCKET, self.context + 1, KV_BUCKET):
                for width in (1, FEED_WIDTH):
                    if (span, width) not in self._graphs:
                        self._capture(span, width)

    def _note_peak(self, timings=None):
        """Keep the device memory high-water mark (the engine's phases, and ours since its last reset)."""
        if self.device.type != "cuda":
            return
        peak = self.torch.cuda.max_memory_allocated(self.device)
        if timings is not None:
            peak = max(peak, int(max(timings.peak_vision_gib, timings.peak_prefill_gib) * 2 ** 30))
        self.peak_bytes = max(self.peak_bytes, peak)
