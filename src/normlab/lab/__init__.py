"""normlab.lab: real data, the literature's models, a training engine, resumable sweeps.

Python API (stable; the ``normlab`` command is a thin layer over it)
=====================================================================

Training one run -- ``normlab.lab.train``::

    from normlab.lab.train import TrainConfig, train, Callback
    cfg = TrainConfig(data="mnist5k", model="seed_mlp", norm="bn", optimizer="adam", lr=1e-3,
                      batch_size=32, epochs=10, seed=0)            # validated on construction (ValueError)
    res = train(cfg, callbacks=[...], progress="auto", threads=None)   # -> RunResult; never raises on divergence

``TrainConfig`` fields (all plain values; ``cfg.key()`` = 16-hex-digit SHA-256 of the whole config = run key):
    data: str ("mnist5k" | "digits" | "mnist" | "fashion_mnist" | "cifar10" | "gaussian_mixture" | "teacher")
    data_args: dict (load_dataset keywords, e.g. {"root": "..."} or {"n": 2000, "dim": 10}); split_seed: int = 0
    model: str ("seed_mlp" | "ioffe_mlp" | "mlp" | "cnn" | "resnet" | "rnn"); norm: str (make_norm spec, "none")
    model_args: dict (builder options: depth, width, activation, init, init_scale, dropout, dropout_position,
               channels, widths, hidden, norm_kw, ... -- see models.model_options(name))
    optimizer: "adam" | "sgd"; lr; momentum; nesterov; adam_eps; weight_decay; grad_clip (0 = off)
    schedule: "constant" | "step" | "exponential" | "cosine"; lr_decay; lr_decay_every; warmup_steps
    batch_size (global); epochs; steps (> 0 overrides epochs); drop_last; eval_every (0 = each epoch end);
    eval_batch_size; seed; sync_bn (pool batch statistics over processes under torchrun; no-op in one process)
``train(config, *, model=None, dataset=None, callbacks=(), progress="auto"|"bar"|"none", record_grad_norm=True,
threads=None)``: ``model``/``dataset`` override what the config names (you own the consistency).
``RunResult``: ``config``; ``step_rows`` (tuples, columns ``STEP_COLUMNS`` = step, epoch, loss, acc, grad_norm,
lr, time), ``steps`` (same as dicts), ``history(column) -> list``; ``evals`` (dicts, ``EVAL_COLUMNS`` = step,
epoch, train_loss, train_acc, val_loss, val_acc, time; step 0 = initial model); ``final`` (last good eval:
val_loss, val_acc, train_loss, train_acc, step, epoch, steps, and test_loss/test_acc when there is a test
split); ``diverged`` (bool), ``diverged_step``; ``wall_time``; ``model`` (the trained nn.Module); ``key``.
``Callback`` methods (override any): ``on_train_start(state)``, ``on_step(state, metrics)`` (after the optimizer
step), ``on_eval(state, metrics)``, ``on_train_end(state, result)`` (also on error; result None then). A plain
callable ``fn(state, metrics)`` is an on_step callback. ``state`` is a ``TrainState`` (config, model, optimizer,
dataset, step, epoch, x, y, stop -- set ``state.stop = True`` to end the run early --, rank, world_size).
Other helpers: ``evaluate(model, x, y, batch_size) -> (loss, acc)``, ``cached_dataset(config)``, ``lr_at``.

Data -- ``normlab.lab.data``: ``load_dataset(name, **kw) -> Dataset`` (x_train, y_train, x_val, y_val, x_test,
y_test tensors; num_classes; input_shape; ``split("val")``). Loaders: ``load_mnist5k``, ``load_digits``,
``load_mnist(root, name=, download=)``, ``load_cifar10(root, download=)``, ``gaussian_mixture``, ``teacher``,
``read_idx``, ``restricted_unpickle``, ``stratified_split``, ``fetch(name, root)`` (download MNIST /
Fashion-MNIST / CIFAR-10 if missing). Bad files raise ``DataError`` (a ValueError).

Models -- ``normlab.lab.models``: ``build_model(name, input_shape, num_classes, norm=..., **options)``,
``model_options(name)``, ``MODELS``, ``init_weights(model, init, scale)``, ``norm_layer(spec, C, **kw)``.

Store -- ``normlab.lab.store``: ``Store(path)`` (SQLite, WAL) with ``save(result, sweep=, params=) -> bool``
(one transaction; False if the key is already stored), ``has(key)``, ``keys()``, ``runs(sweep=, keys=) ->
[RunRecord]``, ``get(key_prefix)``, ``steps(key)``, ``evals(key)`` (lists of dicts); ``open_store(db_or_dir)``.
``RunRecord``: key, sweep, config (dict), params (grid values), final, diverged, diverged_step, wall_time,
created, ``label()``.

Sweeps -- ``normlab.lab.sweep``: ``load_spec(path, out=None) -> Spec`` (validates before anything runs; raises
``SpecError`` naming the key and allowed values), ``parse_spec(dict, where=, out=)``, ``run_grid(spec_or_path,
out=None, jobs=None, echo=print, threads=None) -> SweepSummary`` (total, skipped, ran, diverged, failed, keys, db_path).
``Spec``: name, out, runs = [(TrainConfig, params)], keys, db_path. ``prefetch(spec)`` downloads the file data
sets the runs read (``normlab run --download``).

Distributed: run any script calling ``train`` under ``torchrun --nproc_per_node K``; the engine initializes gloo,
wraps the model in DDP, splits each global batch into K shards and returns identical results on every rank.

Plots -- ``normlab.lab.plots``: ``plot_runs(store, records, metric="val_acc", out=path, x="step")`` (mean line and
a band of +-1 std over seeds for each label; PNG or SVG by suffix).
"""

__all__ = ["data", "models", "train", "store", "sweep", "plots"]
