"""Per-token emotion traces: a text with each token coloured by a readout (HTML for notebooks, a static figure
for figures/), and an ipywidgets explorer to try any text, emotion and layer."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def _rgba(v: float) -> tuple[float, float, float, float]:
    """Red for positive, blue for negative, transparent at zero; ``v`` in [-1, 1]."""
    v = float(np.clip(v, -1, 1))
    return (214 / 255, 39 / 255, 40 / 255, v) if v >= 0 else (31 / 255, 119 / 255, 180 / 255, -v)


def _colour(v: float) -> str:
    r, g, b, a = _rgba(v)
    return f"rgba({r * 255:.0f},{g * 255:.0f},{b * 255:.0f},{a:.2f})"


def scale(values: Sequence[float], skip_first: bool = True) -> np.ndarray:
    """Scale readouts to [-1, 1] by their 99th-percentile magnitude (the paper's transcript scaling); position 0
    is excluded from the percentile because of its massive activation."""
    v = np.asarray(values, float)
    ref = v[1:] if skip_first and len(v) > 1 else v
    m = np.quantile(np.abs(ref), 0.99) or 1.0
    return np.clip(v / m, -1, 1)


def tokens_html(tokens: Sequence[str], values: Sequence[float], title: str = "") -> str:
    s = scale(values)
    spans = "".join(f'<span title="{v:+.3f}" style="background:{_colour(c)};padding:1px 0">{html.escape(t)}</span>'
                    for t, v, c in zip(tokens, values, s))
    head = f"<div style='font-weight:bold;margin-bottom:4px'>{html.escape(title)}</div>" if title else ""
    return f"<div style='font-family:monospace;white-space:pre-wrap;line-height:1.7'>{head}{spans}</div>"


def trace_figure(rows: Sequence[tuple[str, Sequence[str], Sequence[float]]], width: int = 70) -> Any:
    """A static figure of several texts, one panel each, tokens laid out in lines and coloured by readout."""
    import matplotlib.pyplot as plt

    layouts = []
    for title, toks, vals in rows:
        lines, cur, n = [], [], 0
        for t, c in zip(toks, scale(vals)):
            t = t.replace("\n", " ")
            if n + len(t) > width and cur:
                lines.append(cur)
                cur, n = [], 0
            cur.append((t, c))
            n += len(t)
        lines.append(cur)
        layouts.append((title, lines))
    # One data unit = one monospace character advance (DejaVu Sans Mono: 0.602 em), with the axes filling the
    # figure, so tokens sit edge to edge as the text reads ("slanted", not "sl anted").
    size = 7.5
    char_in = size * 0.602 / 72
    line_in = size * 1.6 / 72
    n_lines = sum(len(lines) + 1.7 for _, lines in layouts)
    fig = plt.figure(figsize=(width * char_in + 0.2, n_lines * line_in + 0.2), layout="none")
    ax = fig.add_axes((0.1 / (width * char_in + 0.2), 0, 1 - 0.2 / (width * char_in + 0.2), 1))
    ax.axis("off")
    y = 0.0
    for title, lines in layouts:
        ax.text(0, -y, title, fontsize=size + 0.5, fontweight="bold", va="top", family="DejaVu Sans Mono")
        y += 1.2
        for line in lines:
            x = 0
            for t, c in line:
                ax.text(x, -y, t, fontsize=size, va="top", family="DejaVu Sans Mono",
                        bbox=dict(facecolor=_rgba(c), edgecolor="none", pad=0.0))
                x += len(t)
            y += 1
        y += 0.5
    ax.set_xlim(0, width)
    ax.set_ylim(-y, 0.3)
    return fig


class Explorer:
    """The collection's one widget pattern: controls, and a ``render(**values) -> html`` callback built from
    library calls. ``html()`` renders the current (or given) values without a browser, so tests call the
    callback directly; displayed in a notebook, it shows a static rendering of its initial state (what an
    offline HTML report or a printed page keeps) above the live ipywidgets controls and output."""

    def __init__(self, title: str, controls: dict[str, Any], render: Any, button: str | None = None) -> None:
        self.title, self.controls, self.render, self.button = title, controls, render, button
        self.initial = self.html()
        self._box: Any = None

    def values(self) -> dict[str, Any]:
        return {k: c.value for k, c in self.controls.items()}

    def html(self, **values: Any) -> str:
        return self.render(**{**self.values(), **values})

    def widget(self) -> Any:
        """The live widget (built once): the controls, an optional button, and an output area re-rendered on
        every change."""
        import ipywidgets as w
        from IPython.display import HTML, display

        if self._box is not None:
            return self._box
        out = w.Output()

        def refresh(_: Any = None) -> None:
            out.clear_output(wait=True)
            with out:
                display(HTML(self.html()))

        small = [c for c in self.controls.values() if not isinstance(c, w.Textarea)]
        large = [c for c in self.controls.values() if isinstance(c, w.Textarea)]
        for c in small:
            c.observe(refresh, names="value")
        row = list(small)
        if self.button:
            b = w.Button(description=self.button)
            b.on_click(refresh)
            row.append(b)
        refresh()
        self._box = w.VBox([*large, w.HBox(row), out])
        return self._box

    def _ipython_display_(self) -> None:
        from IPython.display import HTML, display

        display(HTML(f"<div class='emolens-static'><b>{html.escape(self.title)}</b> (static rendering of the "
                     f"initial state; the live controls follow)<br>{self.initial}</div>"))
        display(self.widget())


def readout_explorer(bridge: TransformerBridge, spec: Any, vectors: Any, default_text: str = "") -> Explorer:
    """Type a text, pick an emotion and a layer, see the per-token readout (paper-style trace colouring)."""
    import ipywidgets as w

    from emolens.readout import token_readout

    layers = list(vectors.layers)
    controls = {
        "text": w.Textarea(value=default_text, layout=w.Layout(width="95%", height="90px")),
        "emotion": w.Dropdown(options=vectors.emotions, value=vectors.emotions[0], description="emotion"),
        "layer": w.SelectionSlider(options=layers, value=spec.probe_layer if spec.probe_layer in layers else layers[0],
                                   description="layer"),
    }

    def render(text: str, emotion: str, layer: int) -> str:
        toks, vals = token_readout(bridge, spec, text, vectors, layer)
        return tokens_html(toks, vals[:, vectors.emotion_index(emotion)].tolist(), f"{emotion} at layer {layer}")

    return Explorer("Per-token readout explorer", controls, render, button="Read text")


# the name notebook 03 and forks use
explorer = readout_explorer


def steering_playground(model: Any, vectors: Any, default_prompt: str = "Tell me about your weekend plans.",
                        cost_texts: Sequence[str] = (), max_new_tokens: int = 30, flag_ratio: float = 1.5) -> Explorer:
    """Pick an emotion, a strength, a layer range and where to steer; see the greedy reply with and without
    steering side by side, and the cost of that steering on neutral text (KL per token, perplexity ratio;
    flagged past ``flag_ratio``). ``Explorer.html(...)`` runs the callback without a browser."""
    import ipywidgets as w

    from emolens.generate import complete
    from emolens.interventions import intervention_cost, named_span

    bridge, spec = model
    layers = list(vectors.layers)
    mid = spec.probe_layer if spec.probe_layer in layers else layers[len(layers) // 2]
    controls = {
        "prompt": w.Textarea(value=default_prompt, layout=w.Layout(width="95%", height="60px")),
        "emotion": w.Dropdown(options=vectors.emotions, value=vectors.emotions[0], description="emotion"),
        "alpha": w.FloatSlider(value=0.5, min=-1.0, max=1.0, step=0.05, description="alpha"),
        "layers": w.SelectionRangeSlider(options=layers, index=(layers.index(mid), layers.index(mid)),
                                         description="layers"),
        "span": w.Dropdown(options=["all", "reply", "prompt"], value="all", description="steer on"),
    }
    clean_cache: dict[str, str] = {}

    def render(prompt: str, emotion: str, alpha: float, layers: tuple[int, int], span: str) -> str:
        chosen = [la for la in vectors.layers if layers[0] <= la <= layers[1]]
        formatted = spec.format_user_prompt(prompt)
        if formatted not in clean_cache:
            clean_cache[formatted] = complete(bridge, spec, formatted, max_new_tokens)
        sp = named_span(spec, formatted, "", span)

        def steered() -> Any:
            return vectors.steer(model, emotion, alpha, chosen, spans=[[sp]])
        with steered():
            text = complete(bridge, spec, formatted, max_new_tokens)
        cost = ""
        if cost_texts:
            c = intervention_cost(bridge, spec, list(cost_texts),
                                  lambda: vectors.steer(model, emotion, alpha, chosen))
            flag = " <b style='color:#d62728'>(past the flag)</b>" if c["perplexity_ratio"] > flag_ratio else ""
            cost = (f"<div>cost on {len(cost_texts)} neutral dialogues, every token steered: KL "
                    f"{c['kl_per_token']:.3f} nats/token, perplexity x{c['perplexity_ratio']:.2f}{flag}</div>")
        head = f"{html.escape(emotion)}, alpha {alpha:+.2f}, layers {chosen}, on the {span} tokens"
        cell = "<td style='vertical-align:top;padding:4px;border:1px solid #ccc;white-space:pre-wrap'>{}</td>"
        return (f"<div><b>{head}</b></div><table><tr><th>unsteered</th><th>steered</th></tr><tr>"
                f"{cell.format(html.escape(clean_cache[formatted]))}{cell.format(html.escape(text))}</tr></table>{cost}")

    return Explorer("Steering playground", controls, render, button="Generate")
