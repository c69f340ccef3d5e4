"""Base config of the diffusion family; experiment configs override only what differs."""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
  c = ConfigDict()
  c.family = "dpm"
  c.seed = 0

  c.data = ConfigDict(dict(
      name="mnist_5k",     # see common/data.py DATASETS
      batch_size=128,      # global, over all devices and hosts
      seed=0,
      dequantize=False,    # True: uniform dequantisation; False: bin centres (as DDPM)
      random_flip=False,
      tfds_data_dir="",    # '' -> $TFDS_DATA_DIR or ~/tensorflow_datasets
      image_size=32,       # synthetic and celeb_a only
      channels=3,          # synthetic only
  ))
  c.diffusion = ConfigDict(dict(
      time="discrete",         # discrete: DDPM steps n = 1..N; continuous: VP-SDE time (dpm/process.py)
      schedule="linear",       # discrete: a beta schedule (linear | cosine); continuous: linear | cosine
      num_steps=1000,          # N: the discrete chain (continuous models: its discretisation t_n = nT/N)
      continuous_beta_0=0.1,   # continuous linear VP-SDE: beta(t) = beta_0 + t (beta_1 - beta_0)
      continuous_beta_1=20.0,
      t_eps=1e-5,              # continuous: training draws t ~ U(t_eps, T)
      time_scale=999.0,        # continuous: the network sees time_scale * t (score_sde's 999 t)
  ))
  c.model = ConfigDict(dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2,
                            attn_resolutions=(16,), dropout=0.1, num_groups=32))
  c.optim = ConfigDict(dict(name="adam", lr=2e-4, warmup_steps=5000, schedule="constant",
                            b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip=1.0))
  c.train = ConfigDict(dict(num_steps=800_000, log_every=100, ckpt_every=10_000,
                            eval_every=50_000, ema_decay=0.9999, keep_checkpoints=3,
                            tensorboard=True,
                            trainable="",      # '' trains every parameter; 'head' only paths with it
                            init_from="",      # warm start: another run's workdir (common/train.py)
                            init_step=0,       # its checkpoint (0: the newest)
                            init_source="ema_params",
                            init_target="state.params,state.ema_params"))
  c.sample = ConfigDict(dict(
      sampler="ddpm",      # dpm/samplers.py: ddpm | ddim (reverse process) | dpm_solver++_2m, ...
      num_samples=64,
      num_steps=1000,      # ddpm/ddim: K for --mode=sample
      nfe=20,              # DPM-Solver methods: model evaluations for --mode=sample
      eval_steps=100,      # K (or NFE) of the sample grid written at each evaluation in training
      trajectory="even",   # ddpm/ddim: even | quad | dp
      variance="beta",     # ddpm: beta | beta_tilde | analytic; ddim: ddim | analytic
      eta=0.0,             # ddim
      clip_denoised=True,
      thresholding="none",  # DPM-Solver methods: none | static (clip x0 to [-1, 1]) | dynamic
      seed=1,
  ))
  c.eval = ConfigDict(dict(
      num_examples=10_000,  # test examples for the test loss
      batch_size=500,
      metric="auto",        # sample quality (dpm/quality.py): fd (offline classifier) | fid | auto
      num_samples=1000,     # samples scored per sampler by --mode=eval (papers: 50,000 for FID)
      samplers=(),          # 'name' or 'name:steps' (K or NFE); () = sample.sampler
      seed=3,
      inception_weights="",  # fid: the converted FID Inception weights (docs/EVALUATION.md)
      fid_stats="",          # fid: reference statistics (.npz, mu/sigma); '' = the train split's
      classifier_dir="",     # fd: where the classifier lives ('' = ~/.cache/jax-papers/classifiers)
  ))
  # Reports run after training and with --mode=report (dpm/reports.py): 'analytic', 'solver'.
  c.reports = ()
  c.analytic = ConfigDict(dict(
      gamma_examples=1000,  # training images per timestep for Gamma (paper: 50,000 on CIFAR-10)
      gamma_batch=500,
      seed=0,
      gamma_estimate="mc",  # 'mc': the paper's; 'isotonic': C_t refitted non-decreasing (ours)
      clip=True,            # clip C_t to [0, 1] (Thm 2); False for the ablation
      first_step_clip=True,  # the sampling clip of the step to x_{tau_1}
      ks=(10, 25, 50, 100, 200, 1000),
      variances=("beta", "beta_tilde", "analytic"),  # rows on the even (and quad) trajectories
      trajectories=("even", "dp"),
      dp_variances=("beta", "analytic"),  # each with its own DP-optimal trajectory (paper's OT rows)
      nll_examples=10_000,  # test examples (all of a smaller test split)
      nll_batch=500,
      grid_ks=(10, 25),     # sample grids: DDPM vs Analytic-DDPM, DDIM vs Analytic-DDIM
      grid_samples=64,
      ddpm_baseline="beta_tilde",
      quality_samples=0,    # > 0: the sample quality (eval.metric) of DDPM / Analytic-DDPM / DDIM /
      quality_ks=(10, 25, 50, 100),  # Analytic-DDIM at each of these K (paper: FID, 50,000 samples)
      quality_batch=256,
      quality_seed=4,
  ))
  # SN-DPM / NPR-DPM (dpm/second_stage.py): covariance heads trained on the frozen U-Net.
  c.sn_npr = ConfigDict(dict(
      enabled=False,         # True: --mode=train trains the heads after stage 1 (the same run)
      init_from="",          # the stage-1 workdir ('' = this one, trained first if needed)
      kinds=("sn", "npr"),   # heads trained together on one frozen U-Net
      head="light",          # light: GN-SiLU-conv3x3 (zero init); heavy: a ResBlock first
      stage="sn_npr",        # the stage-2 directory under the workdir
      num_steps=1000, log_every=50, ckpt_every=250, ema_decay=0.999,
      optim=ConfigDict(dict(name="adam", lr=1e-3, warmup_steps=50, schedule="cosine", b1=0.9,
                            b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip=0.0)),
      seed=0,
      moment_examples=100,   # training images per timestep for the averaged moments and Gamma
      moment_batch=100,
      ks=(10, 25, 50, 100),
      forms=("ddpm", "ddim"),
      nll_eta=0.5,           # the DDIM form's eta in the NLL (eta = 0 has no NLL)
      trajectories=("even", "dp"),
      # 'beta_tilde' stands for the form's fixed variance (beta_tilde; DDIM: eta^2 beta_tilde);
      # npr_avg / sn_avg: c_hat averaged over dimensions (the isotropic ablation)
      variances=("beta_tilde", "analytic", "npr", "sn", "npr_avg", "sn_avg"),
      dp_variances=("analytic", "npr", "sn"),  # each on its own DP trajectory
      nll_examples=500,
      nll_batch=500,
      grid_ks=(10, 25),      # sample grids from the same noise
      grid_samples=64,
  ))
  c.solver = ConfigDict(dict(
      methods=("dpm_solver_1", "dpm_solver_fast", "dpm_solver++_2m", "dpm_solver++_3m"),
      nfes=(10, 15, 20),
      num_samples=64,
      seed=2,
      reference_method="dpm_solver++_3m",
      reference_nfe=200,
      thresholding="",      # '' = sample.thresholding; the reference solution uses the same
      quality_samples=0,    # > 0: the sample quality (eval.metric) of each method and NFE
      quality_batch=256,
  ))
  return c


def smoke(c: ConfigDict, image_size: int = 28) -> ConfigDict:
  """Shrinks any dpm config to a seconds-long CPU run (tiny U-Net, few steps, small K)."""
  c.model.update(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(image_size // 2,),
                 dropout=0.1, num_groups=4)
  c.data.batch_size = 16
  c.diffusion.num_steps = 100  # fewer timesteps for Gamma and the NLL; the plumbing is the same
  c.optim.warmup_steps = 2
  c.train.update(num_steps=6, log_every=2, ckpt_every=6, eval_every=6)  # one save: orbax ~3 s
  c.sample.update(num_samples=16, num_steps=10, eval_steps=5)
  c.eval.update(num_examples=64, batch_size=32, num_samples=32)
  c.analytic.update(gamma_examples=16, gamma_batch=16, ks=(2, 5), nll_examples=16, nll_batch=16,
                    grid_ks=(3,), grid_samples=4)
  c.solver.update(nfes=(4,), num_samples=4, reference_nfe=8, methods=("dpm_solver_1", "dpm_solver++_2m"))
  c.sn_npr.update(num_steps=4, log_every=2, ckpt_every=4, moment_examples=8, moment_batch=8,
                  ks=(2, 5), nll_examples=16, nll_batch=16, grid_ks=(3,), grid_samples=4,
                  variances=("beta_tilde", "analytic", "npr", "sn"), dp_variances=("npr",))
  c.sn_npr.optim.warmup_steps = 1
  return c
