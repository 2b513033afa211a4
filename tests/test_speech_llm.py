"""SpeechLLM on tiny random Qwen2 / Llama models saved to disk with a real (tiny BPE) tokenizer.

    .venv/bin/pytest -q tests/test_speech_llm.py
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
import yaml

from asrkit.models.speech_llm import IGNORE, LoraConfig, SpeechLLM, SpeechLLMConfig, stack_frames
from conftest import TINY_ENCODER

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

TEXTS = ["hello world", "the cat sat on the mat", "speech to text is fun"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _tokenizer(chat_template, bos):
    """A byte-level BPE trained on a few sentences, wrapped as a Hugging Face fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + (["<s>"] if bos else [])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = TEXTS + ["Transcribe the speech.", "USER: hi\nASSISTANT: user\nassistant\nsystem\n", "Say it again."]
    tok.train_from_iterator(corpus * 3, trainers.BpeTrainer(vocab_size=90, special_tokens=specials,
                                                            initial_alphabet=[]))
    kw = {"bos_token": "<s>"} if bos else {}
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                                pad_token="<|endoftext|>", chat_template=chat_template, **kw)


@pytest.fixture(scope="module")
def llm_dirs(tmp_path_factory):
    """{"qwen2": dir, "llama": dir}: tiny random LMs + tokenizers, saved like a downloaded model."""
    root = tmp_path_factory.mktemp("llms")
    torch.manual_seed(0)
    dirs = {}
    tok = _tokenizer(CHAT_TEMPLATE, bos=False)
    conf = transformers.Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                                    initializer_range=0.2)  # sharp enough logits for a frozen LM to fit
    dirs["qwen2"] = root / "qwen2"
    transformers.Qwen2ForCausalLM(conf).save_pretrained(dirs["qwen2"])
    tok.save_pretrained(dirs["qwen2"])
    tok = _tokenizer(None, bos=True)  # a base LM: no chat template, a bos token
    conf = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True,
                                    bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    dirs["llama"] = root / "llama"
    transformers.LlamaForCausalLM(conf).save_pretrained(dirs["llama"])
    tok.save_pretrained(dirs["llama"])
    return dirs


def _config(llm_dir, **kw):
    base = dict(encoder="zipformer", encoder_conf=dict(TINY_ENCODER, input_dim=20), downsample=2, projector_dim=48,
                llm_dir=str(llm_dir), lora=LoraConfig(r=4, alpha=8, dropout=0.0))
    base.update(kw)
    return SpeechLLMConfig(**base)


def _feats(lens, dim=20, seed=1):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(len(lens), max(lens), dim, generator=g)
    return feats, torch.tensor(lens)


def test_stack_frames_lengths_and_padding():
    x = torch.arange(2 * 7 * 2, dtype=torch.float32).reshape(2, 7, 2) + 1
    lens = torch.tensor([7, 4])
    y, ylens = stack_frames(x, lens, 3, "pad")
    assert y.shape == (2, 3, 6) and ylens.tolist() == [3, 2]
    assert torch.equal(y[0, 0], x[0, :3].reshape(-1))  # consecutive frames concatenated in order
    assert torch.equal(y[0, 2], torch.cat([x[0, 6], torch.zeros(4)]))  # remainder group zero-padded
    assert torch.equal(y[1, 1], torch.cat([x[1, 3], torch.zeros(4)]))  # frames past the length never leak in
    y, ylens = stack_frames(x, lens, 3, "drop")
    assert y.shape == (2, 2, 6) and ylens.tolist() == [2, 1]
    y, ylens = stack_frames(x[:, :2], torch.tensor([2, 1]), 3, "drop")  # shorter than k: one frame kept
    assert y.shape == (2, 1, 6) and ylens.tolist() == [1, 1]
    y, ylens = stack_frames(x, lens, 1)
    assert torch.equal(y[0], x[0]) and ylens.tolist() == [7, 4]
    with pytest.raises(ValueError, match="downsample_remainder"):
        stack_frames(x, lens, 2, "round")


@pytest.mark.parametrize("name", ["qwen2", "llama"])
def test_prompt_layout_labels_and_loss(llm_dirs, name):
    model = SpeechLLM(_config(llm_dirs[name])).eval()
    tok = model.tokenizer
    feats, lens = _feats([41, 30])
    speech, speech_lens = model.encode_speech(feats, lens)
    enc_lens = model.encoder(feats, lens)[1]
    assert speech.shape[-1] == 32 and speech_lens.tolist() == [(int(n) + 1) // 2 for n in enc_lens]  # k=2, pad
    assert speech.shape[1] == int(speech_lens.max())
    inputs = model.build_inputs(speech, speech_lens, TEXTS[:2])
    before, after = model.prompt_ids()
    if name == "qwen2":
        text = tok.decode(before + after)
        assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_start|>assistant\n")
        assert "Transcribe the speech." in text
    else:
        assert before[0] == tok.bos_token_id and tok.decode(after).strip().endswith("ASSISTANT:")
    emb, mask, labels, sm = inputs["inputs_embeds"], inputs["attention_mask"], inputs["labels"], inputs["speech_mask"]
    table = model.llm.get_input_embeddings().weight
    for i in range(2):
        n_pad = int((mask[i] == 0).sum())
        target = tok(TEXTS[i], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        start = n_pad + len(before)
        # speech frames exactly where the placeholder stood, text embeddings everywhere else
        assert sm[i].nonzero().flatten().tolist() == list(range(start, start + int(speech_lens[i])))
        assert torch.equal(emb[i, sm[i]], speech[i, : speech_lens[i]])
        after_start = start + int(speech_lens[i])
        assert torch.equal(emb[i, after_start: after_start + len(after)], table[after])
        # labels: only the transcript + eos, at the end (left padding)
        assert labels[i, labels[i] != IGNORE].tolist() == target
        assert labels[i, -len(target):].tolist() == target
        assert inputs["position_ids"][i, -1].item() == int(mask[i].sum()) - 1
    loss, parts, num = model(feats, lens, TEXTS[:2])
    assert num.item() == sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in TEXTS[:2])
    with torch.no_grad():  # manual CE over full logits
        logits = model.llm(inputs_embeds=emb, attention_mask=mask, position_ids=inputs["position_ids"]).logits
        manual = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                 ignore_index=IGNORE, reduction="sum")
    assert torch.allclose(loss, manual, rtol=1e-5) and torch.equal(parts["ce"], loss.detach())
    assert 2.0 < loss.item() / num.item() < 8.0  # near log(vocab) for a random model


def test_freeze_switches_and_lora(llm_dirs):
    model = SpeechLLM(_config(llm_dirs["qwen2"], freeze_encoder=True))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("projector.") or ".lora_" in n for n in trainable)
    assert any(n.startswith("projector.") for n in trainable)
    import peft

    lora_layers = [n for n, m in model.llm.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    assert sorted({n.split(".")[-1] for n in lora_layers}) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert len(lora_layers) == 4 * 2  # every target in both layers
    model.train()
    assert not model.encoder.training and model.projector.training  # a frozen encoder stays in eval mode
    n_lora = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    n_proj = sum(p.numel() for p in model.projector.parameters())
    assert model.num_trainable_parameters() == n_lora + n_proj
    state = model.state_dict()  # what checkpoints hold: encoder, projector, adapters
    expected = {f"encoder.{k}" for k in model.encoder.state_dict()}
    expected |= {f"projector.{k}" for k in model.projector.state_dict()}
    assert set(state) == expected | {n for n in trainable if n.startswith("llm.")}
    assert not any(k.startswith("llm.") and ".lora_" not in k for k in state)  # frozen LLM not saved

    model = SpeechLLM(_config(llm_dirs["qwen2"], lora=LoraConfig(enabled=False), freeze_projector=True))
    assert all(n.startswith("encoder.") for n, p in model.named_parameters() if p.requires_grad)
    model = SpeechLLM(_config(llm_dirs["qwen2"], lora=LoraConfig(enabled=False), freeze_llm=False,
                              freeze_encoder=True, freeze_projector=True))
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"llm"}
    assert model.num_trainable_parameters() == sum(p.numel() for p in model.llm.parameters())
    with pytest.raises(ValueError, match="freeze_llm"):
        SpeechLLM(_config(llm_dirs["qwen2"], freeze_llm=False))
    with pytest.raises(ValueError, match="target_modules"):
        SpeechLLM(_config(llm_dirs["qwen2"], lora=LoraConfig(target_modules=["no_such_proj"])))


def test_config_round_trips_through_yaml(llm_dirs):
    from asrkit.config import config_from_dict, config_to_dict

    cfg = _config(llm_dirs["qwen2"], extra_special_tokens=["<sc>"], encoder_init="exp/stage1")
    again = config_from_dict(SpeechLLMConfig, yaml.safe_load(yaml.safe_dump(config_to_dict(cfg))))
    assert again == cfg and isinstance(again.lora, LoraConfig)


def test_trust_remote_code_off_unless_configured(llm_dirs, monkeypatch):
    seen = []
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        orig = cls.from_pretrained

        def spy(*a, _orig=orig, **kw):
            seen.append((kw.get("trust_remote_code"), kw.get("local_files_only")))
            return _orig(*a, **kw)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    SpeechLLM(_config(llm_dirs["llama"]))
    assert seen == [(False, True), (False, True)]
    seen.clear()
    SpeechLLM(_config(llm_dirs["llama"], trust_remote_code=True))
    assert seen == [(True, True), (True, True)]
    with pytest.raises(FileNotFoundError, match="llm_dir"):
        SpeechLLM(_config(llm_dirs["llama"].parent / "missing"))


def test_extra_special_tokens(llm_dirs):
    plain = SpeechLLM(_config(llm_dirs["qwen2"]))
    model = SpeechLLM(_config(llm_dirs["qwen2"], extra_special_tokens=["<sc>", "<nz>"]))
    v = len(plain.tokenizer)
    assert len(model.tokenizer) == v + 2
    sc = model.tokenizer.convert_tokens_to_ids("<sc>")
    assert sc == v and model.llm.get_input_embeddings().weight.shape[0] == v + 2
    assert model.tokenizer("hello <sc> world", add_special_tokens=False)["input_ids"].count(sc) == 1
    assert "<sc>" in model.decode(model.tokenizer("hello <sc> world")["input_ids"] + [model.eos_id, 5])
    # the new rows (and only they) train beside LoRA, and they are in the checkpoint
    tok_params = [n for n, p in model.named_parameters() if p.requires_grad and "trainable_tokens" in n]
    assert len(tok_params) == 2  # input embedding and the untied lm_head
    state = model.state_dict()
    assert all(n in state for n in tok_params)
    # a rebuilt model starts its new rows at the same values (the deltas in a checkpoint apply to them)
    again = SpeechLLM(_config(llm_dirs["qwen2"], extra_special_tokens=["<sc>", "<nz>"]))
    assert torch.equal(again.llm.get_input_embeddings().weight, model.llm.get_input_embeddings().weight)
    # without LoRA (EFIN stage 2: projector only) the new row still trains; tied lm_head shares it
    model = SpeechLLM(_config(llm_dirs["llama"], lora=LoraConfig(enabled=False), extra_special_tokens=["<sc>"],
                              freeze_encoder=True))
    llm_trainable = [n for n, p in model.named_parameters() if p.requires_grad and n.startswith("llm.")]
    assert len(llm_trainable) == 1 and "trainable_tokens" in llm_trainable[0]
    assert [k for k in model.state_dict() if k.startswith("llm.")] == llm_trainable


def test_the_assistant_turn_ends_at_any_llm_control_token(llm_dirs):
    """A model that opens a new chat turn instead of writing <|im_end|> must not leak "assistant ..." text."""
    model = SpeechLLM(_config(llm_dirs["qwen2"], extra_special_tokens=["<sc>"]))
    tok = model.tokenizer
    words = tok("hello <sc> world", add_special_tokens=False)["input_ids"]
    more = tok("assistant\nhello", add_special_tokens=False)["input_ids"]
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    assert model.decode(words + [im_start] + more) == "hello <sc> world"
    assert model.decode(words + [model.eos_id] + more) == "hello <sc> world"
    assert model.decode(words) == "hello <sc> world"
    assert model._stop_ids[0] == model.eos_id and im_start in model._stop_ids
    assert tok.convert_tokens_to_ids("<sc>") not in model._stop_ids


def test_batched_generation_equals_one_at_a_time_untrained(llm_dirs):
    """An untrained model emits arbitrary tokens: any padding leak would show as a difference."""
    model = SpeechLLM(_config(llm_dirs["qwen2"])).eval()
    feats, lens = _feats([41, 23, 36], seed=5)
    for beams in (1, 3):
        batched = model.generate(feats, lens, max_new_tokens=8, num_beams=beams)
        single = [model.generate(feats[i: i + 1, : lens[i]], lens[i: i + 1], max_new_tokens=8, num_beams=beams)[0]
                  for i in range(3)]
        assert batched == single and len(set(batched)) == 3 and all(batched), batched


def test_encoder_init_from_asr_experiment(llm_dirs, tmp_path):
    from asrkit.config import config_to_dict
    from asrkit.models.asr import AsrModel, AsrModelConfig
    from asrkit.training.checkpoint import save_checkpoint

    asr_cfg = AsrModelConfig(encoder_conf=dict(TINY_ENCODER, input_dim=20), vocab_size=12)
    asr = AsrModel(asr_cfg)
    with torch.no_grad():
        for p in asr.encoder.parameters():
            p.add_(0.5)  # differ from any fresh initialisation
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "config.yaml").write_text(yaml.safe_dump({"model": config_to_dict(asr_cfg)}))
    save_checkpoint(exp / "epoch-3.pt", {"model": asr.state_dict()})
    for source in (exp, exp / "epoch-3.pt"):
        model = SpeechLLM(_config(llm_dirs["llama"], encoder_init=str(source)))
        for k, v in asr.encoder.state_dict().items():
            assert torch.equal(model.encoder.state_dict()[k], v), k
    skipped = SpeechLLM(_config(llm_dirs["llama"], encoder_init=str(exp)), init_encoder=False)
    assert not torch.equal(skipped.encoder.state_dict()[k], v)
    with pytest.raises(FileNotFoundError, match="encoder_init"):
        SpeechLLM(_config(llm_dirs["llama"], encoder_init=str(tmp_path / "nowhere")))


def test_trained_model_transcribes_and_round_trips(llm_dirs):
    """~100 steps on 3 fixed utterances: greedy and beam give the transcripts; batched == one at a time."""
    torch.manual_seed(0)
    cfg = _config(llm_dirs["qwen2"], lora=LoraConfig(r=8, alpha=16, dropout=0.0,
                                                     target_modules=["q_proj", "v_proj", "gate_proj", "down_proj"]))
    model = SpeechLLM(cfg)
    feats, lens = _feats([41, 30, 36], seed=3)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    losses = []
    for step in range(100):
        loss, _, num = model(feats, lens, TEXTS)
        opt.zero_grad()
        (loss / num).backward()
        opt.step()
        losses.append((loss / num).item())
    # a frozen random LM's logits cannot get sharp: ~0.3 nats/token is its floor here (chance ~4.5)
    assert losses[0] > 4.0 and losses[-1] < 0.8, (losses[0], losses[-1])
    model.eval()
    assert model.generate(feats, lens, max_new_tokens=30) == TEXTS
    assert model.generate(feats, lens, max_new_tokens=30, num_beams=3) == TEXTS
    one_by_one = [model.generate(feats[i: i + 1, : lens[i]], lens[i: i + 1], max_new_tokens=30)[0] for i in range(3)]
    assert one_by_one == TEXTS
    # the checkpoint (trainable weights only) rebuilds the same model from llm_dir
    state = model.state_dict()
    rebuilt = SpeechLLM(dataclasses.replace(cfg), init_encoder=False).eval()
    rebuilt.load_state_dict(state)
    with torch.no_grad():
        assert torch.allclose(rebuilt(feats, lens, TEXTS)[0], model(feats, lens, TEXTS)[0], rtol=1e-5)
    assert rebuilt.generate(feats, lens, max_new_tokens=30) == TEXTS
    wrapper = torch.nn.Module()  # as DDP holds it: loading goes through the hook, not our load_state_dict
    wrapper.module = SpeechLLM(cfg, init_encoder=False).eval()
    wrapper.load_state_dict({f"module.{k}": v for k, v in state.items()})
    assert wrapper.module.generate(feats, lens, max_new_tokens=30) == TEXTS
    with pytest.raises(RuntimeError, match="does not fit(.|\n)*lora_A"):
        SpeechLLM(cfg, init_encoder=False).load_state_dict({k: v for k, v in state.items() if "lora" not in k})


def test_trainable_encoder_keeps_its_own_frozen_parts(llm_dirs, tmp_path):
    """freeze_encoder=False must not unfreeze what the encoder keeps fixed: Whisper's sinusoidal
    positions, and every layer below unfreeze_last_n_layers."""
    from test_whisper import save_tiny_whisper

    whisper_dir = save_tiny_whisper(tmp_path / "whisper", num_mel_bins=20)
    cfg = _config(llm_dirs["qwen2"], encoder="whisper", freeze_encoder=False,
                  encoder_conf=dict(model_dir=str(whisper_dir), freeze=True, unfreeze_last_n_layers=1))
    model = SpeechLLM(cfg)
    trainable = {n for n, p in model.encoder.named_parameters() if p.requires_grad}
    assert trainable and all("embed_positions" not in n for n in trainable)
    assert all(".layers.2." in n or "layer_norm" in n for n in trainable if ".layers." in n or "norm" in n)
    assert not any(".layers.0." in n or ".layers.1." in n for n in trainable)
