"""A tiny random Llama for the simulated cluster (there is no Hugging Face hub here).

``make_tiny_llama(dest)`` runs a generator script with the node venv's Python (it has
transformers and tokenizers; the controller venv does not): a byte-level BPE tokenizer (vocab 512)
trained on text embedded below, ``LlamaConfig(hidden_size=128, intermediate_size=256, 2 layers,
4 heads, 2 KV heads, head_dim=32)``, random weights from a fixed seed in bf16 safetensors, a chat
template and a generation config. About 0.8 MB; it takes a few seconds.

Idempotent: ``dest/.multinode-vllm-stamp`` holds a hash of the generator and its parameters; a
directory with a matching stamp is reused. ``head_dim`` stays >= 32: vLLM's CPU attention crashed
at the first request with 16.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from multinode_vllm.testbed.podman import TestbedError
from multinode_vllm.testbed.state import cache_dir

STAMP = ".multinode-vllm-stamp"
#: The model's name in vLLM (``--served-model-name``) is the caller's; this is the default directory.
DEFAULT_NAME = "tiny-llama"

CONFIG: dict[str, int | float] = {
    "vocab_size": 512,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
}
SEED = 1234

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

# Training text for the tokenizer (any text works; this one names what the test bed does).
CORPUS = """\
The simulated cluster runs real Ray and a real vLLM build for CPUs on every node.
A head node starts Ray, the worker nodes join it, and vLLM serves one model across them.
Pipeline parallelism splits the layers of the model between nodes; tensor parallelism splits
every layer between the devices of one stage. The fabric carries activations from stage to stage.
Hello! How are you today? I am fine, thank you. What is the capital of France? Paris.
Count with me: one, two, three, four, five, six, seven, eight, nine, ten, eleven, twelve.
0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14 2.71 42 7 + 5 = 12; 9 * 9 = 81.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
System: you are a helpful assistant. User: tell me a story. Assistant: once upon a time,
there was a small model that answered every question with random words, and it was enough.
"""

GENERATOR = r"""
import json, sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

params = json.loads(sys.argv[1])
dest = Path(params["dest"])
dest.mkdir(parents=True, exist_ok=True)
torch.manual_seed(params["seed"])

specials = ["<unk>", "<s>", "</s>", "<pad>"]
tok = Tokenizer(models.BPE(unk_token="<unk>"))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(
    vocab_size=params["config"]["vocab_size"],
    special_tokens=specials,
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
)
tok.train_from_iterator([params["corpus"]] * 4, trainer=trainer)
tok.post_processor = processors.TemplateProcessing(
    single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
)
fast = PreTrainedTokenizerFast(
    tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
    model_max_length=params["config"]["max_position_embeddings"],
)
fast.chat_template = params["chat_template"]
fast.save_pretrained(dest)
# transformers 5 writes chat_template.jinja; older readers look in tokenizer_config.json.
tc_path = dest / "tokenizer_config.json"
tc = json.loads(tc_path.read_text())
tc["chat_template"] = params["chat_template"]
tc_path.write_text(json.dumps(tc, indent=2) + "\n")

vocab = tok.get_vocab_size()
cfg = dict(params["config"], vocab_size=vocab)
config = LlamaConfig(
    **cfg,
    bos_token_id=fast.bos_token_id,
    eos_token_id=fast.eos_token_id,
    pad_token_id=fast.pad_token_id,
    tie_word_embeddings=False,
    torch_dtype="bfloat16",
)
model = LlamaForCausalLM(config).to(torch.bfloat16)
model.save_pretrained(dest, safe_serialization=True)
GenerationConfig(
    bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
    do_sample=True, temperature=0.8, top_p=0.95, max_new_tokens=64,
).save_pretrained(dest)
for f in dest.iterdir():
    f.chmod(0o644)
print(json.dumps({"vocab_size": vocab, "parameters": sum(p.numel() for p in model.parameters())}))
"""


def default_model_dir() -> Path:
    return cache_dir() / "models" / DEFAULT_NAME


def _default_python() -> str:
    from multinode_vllm.testbed.nodeenv import default_venv  # noqa: PLC0415  nodeenv imports this module

    return str(default_venv() / "bin" / "python")


def spec_hash() -> str:
    """Hash of everything that determines the generated files."""
    blob = json.dumps(
        {"config": CONFIG, "seed": SEED, "chat": CHAT_TEMPLATE, "corpus": CORPUS, "gen": GENERATOR},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def is_current(dest: Path) -> bool:
    try:
        return (dest / STAMP).read_text().strip() == spec_hash()
    except FileNotFoundError:
        return False


def make_tiny_llama(dest: Path | None = None, *, python: str | None = None, quiet: bool = False) -> Path:
    """Generate (or reuse) the tiny model in ``dest``; return ``dest``.

    ``python`` is an interpreter with torch + transformers + tokenizers (default: the node venv's).
    Raises ``TestbedError`` when the interpreter is missing or the generator fails.
    """
    dest = Path(dest) if dest is not None else default_model_dir()
    if is_current(dest):
        return dest
    python = python or _default_python()
    if not Path(python).exists():
        raise TestbedError(
            f"{python} does not exist: build the node venv first "
            "(python -m multinode_vllm.testbed.nodeenv, or nodeenv.build_node_venv())"
        )
    started = time.monotonic()
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    params = {
        "dest": str(tmp),
        "seed": SEED,
        "config": CONFIG,
        "corpus": CORPUS,
        "chat_template": CHAT_TEMPLATE,
    }
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [python, "-c", GENERATOR, json.dumps(params)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise TestbedError(f"tiny model generator failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    (tmp / STAMP).write_text(spec_hash() + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    if not quiet:
        info = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        print(f"[tinymodel] {dest}: {info} in {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)
    return dest


if __name__ == "__main__":  # python -m multinode_vllm.testbed.tinymodel [DEST]
    print(make_tiny_llama(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
