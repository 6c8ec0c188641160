"""The config tree: defaults, YAML, flags on top, every problem in one error, saved and re-read."""

from __future__ import annotations

import pytest

from localtune.config import Config, describe_fields, load_config
from localtune.errors import ConfigError


def test_defaults_are_valid_and_documented():
    cfg = load_config()
    assert cfg.train.load_in_4bit and cfg.train.optimizer == "paged_adamw_8bit" and cfg.adapter.r == 16
    assert cfg.overridden() == []
    for key, _default, doc in describe_fields():
        assert doc.strip().endswith("."), key


def test_yaml_then_flags_with_sources(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("train:\n  lr: 2e-5\n  max_steps: 50\nlora:\n  r: 8\n  target_modules: [q_proj, v_proj]\n")
    cfg = load_config(f, {"train.max_steps": (10, "--max-steps"), "data.path": (None, "--data")})
    assert cfg.train.lr == 2e-5  # YAML 1.1 reads "2e-5" as text; the float field still gets a number
    assert cfg.train.max_steps == 10 and cfg.adapter.r == 8 and cfg.adapter.target_modules == ["q_proj", "v_proj"]
    assert cfg.source_of("train.lr") == f"{f}:2"
    assert cfg.source_of("train.max_steps") == "--max-steps"
    assert cfg.source_of("adapter.alpha") == "default"
    assert "train.max_steps = 10  (--max-steps)" in cfg.overridden()


def test_all_problems_in_one_error_with_file_lines(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  learning_rate: 1e-4\n  epochs: many\nlora:\n  r: 0\n  dropout: 1.5\nexprt: {}\n")
    with pytest.raises(ConfigError) as info:
        load_config(f)
    text = info.value.render()
    probs = {(p.where, p.field) for p in info.value.problems}
    assert (f"{f}:2", "train.learning_rate") in probs and "did you mean 'train.lr'" in text
    assert (f"{f}:3", "train.epochs") in probs and "expected a whole number" in text
    assert (f"{f}:7", "exprt") in probs and "did you mean 'export'" in text
    assert (f"{f}:5", "adapter.r") in probs and (f"{f}:6", "adapter.dropout") in probs  # range checks still ran
    assert info.value.exit_code == 2


def test_range_and_contradiction_checks_collect_everything(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(
        "data:\n  val_file: val.jsonl\n  val_fraction: 0.1\ntrain:\n  device: cpu\n  precision: fp16\n"
        "lora:\n  r: 0\n  dropout: 1.5\nexport:\n  quants: [q4_k_m, q9_z]\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(f)
    fields = sorted(p.field for p in info.value.problems)
    assert fields == ["adapter.dropout", "adapter.r", "data.val_file", "export.quants", "train.precision"]
    text = info.value.render()
    assert "both a validation file" in text and "fp16 training is not supported on the CPU" in text
    assert "q9_z" in text and "q4_k_m" in text  # names the bad value and lists the good ones
    assert f"{f}:8" in text  # where lora.r was set


def test_choices_are_checked():
    with pytest.raises(ConfigError) as info:
        load_config(None, {"train.optimizer": ("sgd", "--optimizer"), "data.format": ("xml", "--format")})
    assert sorted(p.where for p in info.value.problems) == ["--format", "--optimizer"]


def test_bad_yaml_syntax_names_the_line(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("train:\n  lr: 1e-4\n   epochs: 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(f)
    assert info.value.problems[0].where == f"{f}:3"


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config(
        None,
        {
            "train.lr": ("3e-4", "--lr"),
            "adapter.target_modules": ("q_proj,k_proj", "--targets"),
            "model.chat_template": ("{{ x }}", "--chat-template"),
        },
    )
    path = cfg.save(tmp_path / "config.yaml")
    assert not (tmp_path / "config.yaml.partial").exists()
    again = load_config(path)
    assert again.to_dict() == cfg.to_dict()
    assert again.train.lr == 3e-4 and again.adapter.target_modules == ["q_proj", "k_proj"]


def test_config_command_prints_docs_and_sources(tmp_path, cli):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 3\n")
    result = cli("config", "--config", f)
    assert result.exit_code == 0
    assert "epochs: 3" in result.output and f"[from {f}:2]" in result.output
    assert "QLoRA: load the base in 4-bit NF4" in result.output


def test_cli_config_errors_exit_2_without_traceback(tmp_path, cli):
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  max_seq_len: 4\n")
    result = cli("data", "inspect", "whatever.jsonl", "--config", f)
    assert result.exit_code == 2 and f"{f}:2: data.max_seq_len" in result.output
    assert "Traceback" not in result.output


def test_set_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="did you mean 'train.lr'"):
        Config().set("train.lrr", 1.0, "--set")


def _knob_options(command):
    import click

    from localtune.cli.options import dest

    by_dest = {}
    for p in command.params:
        if isinstance(p, click.Option):
            by_dest[p.name] = p
    return {name.replace("__", "."): p for name, p in by_dest.items() if "__" in name}, by_dest, dest


def test_cli_options_are_the_config_fields():
    """Every knob flag of every command is generated from its config field: same flag, type, choices and
    help text; `train` offers every field of the sections it uses; no command that builds a config
    re-declares a knob's flag with help of its own."""
    import click

    from localtune.cli import main
    from localtune.config import knobs

    all_knobs = {k.key: k for k in knobs()}
    flags = {k.flag: k for k in knobs()}

    def commands(group):
        for cmd in group.commands.values():
            yield from commands(cmd) if isinstance(cmd, click.Group) else [cmd]

    seen = set()
    for cmd in commands(main):
        generated, _, _ = _knob_options(cmd)
        for key, param in generated.items():
            k = all_knobs[key]
            seen.add(key)
            assert param.help.startswith(k.doc), (cmd.name, key)
            assert k.flag in param.opts and (k.short is None or k.short in param.opts)
            if k.is_bool:
                assert param.secondary_opts == [f"--no-{k.flag[2:]}"]
            if k.choices:
                assert tuple(param.type.choices) == k.choices
        if cmd.name not in ("train", "quick", "plan", "inspect", "export"):
            continue  # eval's --data (held-out rows) is not the training data knob
        for param in cmd.params:  # a command that builds a config may not re-declare a knob with its own help
            if isinstance(param, click.Option) and "__" not in param.name:
                for flag in set(param.opts) & set(flags):
                    assert param.help.startswith(flags[flag].doc), (cmd.name, flag)
    train = main.commands["train"]
    expected = {key for key in all_knobs if key.split(".")[0] in ("model", "data", "adapter", "train")}
    assert set(_knob_options(train)[0]) == expected
    assert seen >= expected


def test_cli_flag_values_go_through_config_validation(cli, tmp_path):
    """A generated flag's value is checked by config validation and named by its flag."""
    result = cli("train", "--model", "m", "--data", "d", "--out", tmp_path / "run", "--lr", "abc")
    assert result.exit_code == 2 and "--lr" in result.output and "abc" in result.output
    result = cli("train", "--model", "m", "--data", "d", "--out", tmp_path / "run", "--micro-batch", "many")
    assert result.exit_code == 2 and "--micro-batch" in result.output and "many" in result.output
