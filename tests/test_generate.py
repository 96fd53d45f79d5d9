"""python -m clusterfusion.generate: on the CPU, with a tiny random GPT-NeoX checkpoint
and a word-level tokenizer saved to a temporary folder (nothing is downloaded)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from clusterfusion import Decoder  # noqa: E402
from clusterfusion.generate import Sampling, generate_text, main  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]
WORDS = ("<|endoftext|> <unk> <pad> the a an cat dog bird sat ran flew on under over mat rug tree "
         "and but is was big small red blue green fast slow happy sad very not").split()
PROMPT = "the small cat sat on the mat"
STATS = re.compile(r"clusterfusion: (\d+) tokens in [\d.]+ s, [\d.]+ tokens/s, [\d.]+ ms/token")


def _save_tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    word_level = Tokenizer(models.WordLevel(vocab={word: i for i, word in enumerate(WORDS)}, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    word_level.decoder = decoders.WordPiece()  # joins the words with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, eos_token="<|endoftext|>", unk_token="<unk>",
                                        pad_token="<pad>")
    tokenizer.save_pretrained(folder)
    return tokenizer


def _save_model(folder: Path):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                           vocab_size=len(WORDS), rotary_pct=0.25, use_parallel_residual=True,
                           max_position_embeddings=256, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(config).eval()
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A folder with a tiny GPT-NeoX checkpoint and its tokenizer; (folder, model, tokenizer)."""
    folder = tmp_path_factory.mktemp("tiny-gpt-neox")
    model = _save_model(folder)
    tokenizer = _save_tokenizer(folder)
    return folder, model, tokenizer


def _run(capsys, *arguments):
    """main(arguments) on the CPU (the checkpoint's model is compared on the CPU): (exit
    status, stdout, stderr); argparse's SystemExit gives its code."""
    try:
        status = main(["--device", "cpu", *(str(a) for a in arguments)])
    except SystemExit as exit:
        status = exit.code
    out, err = capsys.readouterr()
    return status, out, err


def test_greedy_prints_text_and_figures_and_equals_huggingface(checkpoint, capsys):
    folder, model, tokenizer = checkpoint
    status, out, err = _run(capsys, "--model", folder, "--prompt", PROMPT, "--max-new-tokens", 12)
    assert status == 0, err
    assert err.startswith(f"loading {folder} ...")
    assert "running on the CPU" in err and "on CPU" in err
    stats = STATS.search(err)
    assert stats is not None, err
    assert re.search(r"fusions: attention_block, mlp_block_residual, mlp_down_residual; fused ops serve layers 0, 1", err)

    prompt_ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    expected = model.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=12,
                              do_sample=False, eos_token_id=0, pad_token_id=tokenizer.pad_token_id)
    expected_ids = expected[0, prompt_ids.shape[1]:].tolist()
    assert int(stats.group(1)) == len(expected_ids) > 1
    assert out == tokenizer.decode(expected_ids, skip_special_tokens=True) + "\n"

    ids = generate_text(Decoder(model, max_length=32), tokenizer, prompt_ids, 12, eos_token_id=0).ids
    assert ids == expected_ids


def test_generate_text_writes_whole_characters_as_they_complete():
    """Tokens holding parts of a character, or pieces that merge, print as the decoded whole."""

    class Bytes:  # a byte-level tokenizer: token i is byte i
        @staticmethod
        def decode(ids, skip_special_tokens=True):
            return bytes(ids).decode("utf-8", errors="replace")

    class Stream:  # a decoder streaming a fixed text's bytes
        device = torch.device("cpu")

        @staticmethod
        def stream(prompt_ids, max_new_tokens, eos_token_id=None):
            return iter("é, 🐍!".encode())

    writes = []

    class Recorder(io.StringIO):
        def write(self, text):
            writes.append(text)
            return super().write(text)

    out = Recorder()
    generation = generate_text(Stream(), Bytes(), torch.zeros(1, 1, dtype=torch.long), 16, out=out)
    assert out.getvalue() == generation.text == "é, 🐍!"
    assert all("\ufffd" not in text for text in writes)
    assert "🐍" in writes  # its 4 bytes wrote nothing until the last one


def test_sampling_with_a_seed_repeats(checkpoint, capsys):
    folder, model, tokenizer = checkpoint
    sampled = ("--model", folder, "--prompt", PROMPT, "--max-new-tokens", 16, "--temperature", 1.5, "--top-p", 0.95)
    first = _run(capsys, *sampled, "--seed", 5)
    again = _run(capsys, *sampled, "--seed", 5)
    assert first[0] == again[0] == 0
    assert first[1] == again[1] and first[1].strip()
    assert "sampling, seed 5" in first[2]

    decoder = Decoder(model, max_length=40)
    prompt_ids = tokenizer(PROMPT, return_tensors="pt").input_ids

    def sample(seed):
        return generate_text(decoder, tokenizer, prompt_ids, 24, Sampling(True, 1.5, 0, 0.95, seed)).ids

    assert sample(5) == sample(5) != sample(6)
    assert sample(5) != generate_text(decoder, tokenizer, prompt_ids, 24).ids  # not greedy


def test_compare_prints_both_figures_and_the_speedup(checkpoint, capsys):
    folder, _, _ = checkpoint
    status, out, err = _run(capsys, "--model", folder, "--prompt", PROMPT, "--max-new-tokens", 8, "--fusions", "none",
                            "--compare")
    assert status == 0, err
    ours, theirs = out.split("--- HuggingFace generate ---\n")
    assert ours == theirs  # greedy: the same text
    assert STATS.search(err) and re.search(r"HuggingFace generate: \d+ tokens in .* [\d.]+ ms/token", err)
    assert re.search(r"clusterfusion [\d.]+ ms/token vs HuggingFace [\d.]+ ms/token: speedup [\d.]+x; "
                     r"the two generated the same tokens", err)
    assert "fusions: none" in err


def _folder_with(folder: Path, source: Path, files: tuple[str, ...], config_change: dict | None = None) -> Path:
    """``folder`` holding copies of ``source``'s ``files``, and its config.json changed by ``config_change``."""
    folder.mkdir()
    for name in files:
        shutil.copy(source / name, folder / name)
    if config_change is not None:
        config = json.loads((source / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **config_change}))
    return folder


@pytest.mark.parametrize(
    "case, arguments, status, message",
    [
        ("missing folder", ("--model", "{missing}", "--prompt", PROMPT), 2, "no such directory"),
        ("no config.json", ("--model", "{empty}", "--prompt", PROMPT), 2, "no config.json"),
        ("not GPT-NeoX", ("--model", "{llama}", "--prompt", PROMPT), 2, "a llama model"),
        ("no tokenizer", ("--model", "{untokenized}", "--prompt", PROMPT), 2, "no tokenizer"),
        ("empty prompt", ("--prompt", ""), 2, "--prompt is empty"),
        ("prompt without tokens", ("--prompt", "   "), 1, "has no tokens"),
        ("no new tokens", ("--prompt", PROMPT, "--max-new-tokens", 0), 2, "--max-new-tokens must be >= 1"),
        ("temperature 0", ("--prompt", PROMPT, "--temperature", 0), 1, "'temperature' must be > 0"),
        ("top-p above 1", ("--prompt", PROMPT, "--top-p", 1.5), 1, "'top_p' must be in (0, 1]"),
        ("negative top-k", ("--prompt", PROMPT, "--top-k", -1), 1, "'top_k' must be an int >= 0"),
        ("seed without sampling", ("--prompt", PROMPT, "--seed", 1), 2, "--seed applies to sampling"),
        ("unknown fusion", ("--prompt", PROMPT, "--fusions", "mlp_down,fast"), 2, "--fusions must be auto, none or"),
        ("short cache", ("--prompt", PROMPT, "--max-length", 8), 1, "--max-length 8 is less than"),
    ],
)
def test_errors_are_one_clear_line(checkpoint, tmp_path, capsys, case, arguments, status, message):
    folder, _, _ = checkpoint
    folders = {
        "missing": tmp_path / "missing",
        "empty": _folder_with(tmp_path / "empty", folder, ()),
        "llama": _folder_with(tmp_path / "llama", folder, ("model.safetensors",), {"model_type": "llama"}),
        "untokenized": _folder_with(tmp_path / "untokenized", folder, ("config.json", "model.safetensors")),
    }
    arguments = [str(a).format(**folders) for a in arguments]
    if "--model" not in arguments:
        arguments = ["--model", str(folder), *arguments]
    got_status, out, err = _run(capsys, *arguments)
    assert got_status == status, err
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("python -m clusterfusion.generate: error: ") and message in last_line, err
    assert "Traceback" not in err and out == ""


def _command(*arguments):
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY),
                                                                              os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "clusterfusion.generate", *arguments], cwd=REPOSITORY,
                          env=environment, capture_output=True, text=True, timeout=60)


def test_help_runs_as_a_module():
    result = _command("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m clusterfusion.generate")
    for option in ("--model", "--prompt", "--max-new-tokens", "--top-p", "--temperature", "--top-k", "--seed",
                   "--fusions", "--max-length", "--dtype", "--compare"):
        assert option in result.stdout


def test_a_bad_argument_exits_without_a_traceback_as_a_module(tmp_path):
    result = _command("--model", str(tmp_path / "missing"), "--prompt", PROMPT)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith("no such directory")
    assert "Traceback" not in result.stderr


def test_device_cuda_without_a_gpu_is_a_usage_error(checkpoint, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    folder, _, _ = checkpoint
    status, _, err = _run(capsys, "--model", folder, "--prompt", PROMPT, "--device", "cuda")
    assert status == 2 and "--device cuda: no CUDA GPU is available" in err


def test_a_failure_while_generating_is_one_line(checkpoint, capsys, monkeypatch):
    """A RuntimeError from the decode loop (e.g. logits the sampler cannot draw from): status 1, no traceback."""
    import clusterfusion.generate as command

    def fail(*args, **kwargs):
        raise RuntimeError("clusterfusion.Decoder: step 3's logits hold no finite value\nsecond line")

    monkeypatch.setattr(command, "generate_text", fail)
    folder, _, _ = checkpoint
    status, out, err = _run(capsys, "--model", str(folder), "--prompt", PROMPT)
    assert status == 1, err
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("python -m clusterfusion.generate: error: ") and "no finite value second line" in last_line
    assert "Traceback" not in err
