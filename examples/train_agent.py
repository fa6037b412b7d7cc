"""PPO in the learned world: an agent trained entirely inside Genie-v0's batched vector env.

    python examples/train_agent.py                     # bundled CoinRun world, CPU, a few minutes
    python examples/train_agent.py --total_steps 200000 --num_envs 64 --device cuda

The reward is ``genie_env.metrics.rightward_progress``: in CoinRun the coin lies to the right and the camera
follows the agent, so the scene scrolling left between frames means the agent moved right. The
bundled model's learned reward head is there too (``reward_fn=None`` uses it), but its random-
policy data rarely reaches the coin, so that reward is close to zero everywhere.

Everything an RL reader needs is in this file, CleanRL-style: the hyper-parameters are the
dataclass below; the policy is a small CNN; the loop is PPO with GAE and a clipped objective.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, fields

import gymnasium as gym
import torch
from torch import nn

import genie_env  # noqa: F401  (registers Genie-v0)
from genie_env.metrics import rightward_progress


@dataclass
class Args:
    num_envs: int = 16
    num_steps: int = 32          # steps per env per rollout
    total_steps: int = 4096
    lr: float = 2.5e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    update_epochs: int = 3
    minibatches: int = 4
    clip: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_episode_steps: int = 200
    maskgit_steps: int | None = None
    device: str = "auto"
    seed: int = 0
    tokenizer_path: str | None = None  # None: the bundled CoinRun world
    dynamics_path: str | None = None
    prompt: str | None = None


class Agent(nn.Module):
    def __init__(self, n_actions: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 4, stride=2, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(64 * 16, 256), nn.ReLU())
        self.actor = nn.Linear(256, n_actions)
        self.critic = nn.Linear(256, 1)

    def forward(self, obs: torch.Tensor):
        h = self.body(obs.permute(0, 3, 1, 2).float() / 255.0)
        return torch.distributions.Categorical(logits=self.actor(h)), self.critic(h).squeeze(-1)


def make_envs(args: Args, reward_fn=rightward_progress) -> gym.vector.VectorEnv:
    # SAME_STEP auto-reset: the step that ends an episode returns the next episode's first frame,
    # as CleanRL's PPO assumes. Under NEXT_STEP the step after it would ignore the action and
    # return a reset frame, a transition the policy must not be trained on.
    return gym.make_vec("Genie-v0", num_envs=args.num_envs, device=args.device, reward_fn=reward_fn,
                        max_episode_steps=args.max_episode_steps, maskgit_steps=args.maskgit_steps,
                        tokenizer_path=args.tokenizer_path, dynamics_path=args.dynamics_path, prompt=args.prompt,
                        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def train(args: Args) -> dict:
    torch.manual_seed(args.seed)
    envs = make_envs(args)
    dev = envs.unwrapped.device
    agent = Agent(envs.single_action_space.n).to(dev)
    obs, _ = envs.reset(seed=args.seed)
    opt = torch.optim.Adam(agent.parameters(), lr=args.lr, eps=1e-5)
    n, t = args.num_envs, args.num_steps
    buf_obs = torch.zeros((t, n, *envs.single_observation_space.shape), dtype=torch.uint8, device=dev)
    buf_act, buf_logp, buf_rew, buf_done, buf_val = (torch.zeros((t, n), device=dev) for _ in range(5))
    next_obs = torch.as_tensor(obs, device=dev)
    next_done = torch.zeros(n, device=dev)
    history, start = [], time.perf_counter()
    for update in range(args.total_steps // (n * t)):
        for s in range(t):
            buf_obs[s], buf_done[s] = next_obs, next_done
            with torch.no_grad():
                dist, value = agent(next_obs)
                action = dist.sample()
            buf_act[s], buf_logp[s], buf_val[s] = action, dist.log_prob(action), value
            obs, reward, term, trunc, _ = envs.step(action.cpu().numpy())
            buf_rew[s] = torch.as_tensor(reward, device=dev, dtype=torch.float32)
            next_obs = torch.as_tensor(obs, device=dev)
            next_done = torch.as_tensor(term | trunc, device=dev, dtype=torch.float32)
        with torch.no_grad():
            _, next_value = agent(next_obs)
            adv = torch.zeros_like(buf_rew)
            last = torch.zeros(n, device=dev)
            for s in reversed(range(t)):
                nonterminal = 1.0 - (next_done if s == t - 1 else buf_done[s + 1])
                nv = next_value if s == t - 1 else buf_val[s + 1]
                delta = buf_rew[s] + args.gamma * nv * nonterminal - buf_val[s]
                adv[s] = last = delta + args.gamma * args.gae_lambda * nonterminal * last
            ret = adv + buf_val
        b_obs, b_act, b_logp = buf_obs.flatten(0, 1), buf_act.flatten(), buf_logp.flatten()
        b_adv, b_ret = adv.flatten(), ret.flatten()
        for _ in range(args.update_epochs):
            for mb in torch.randperm(n * t, device=dev).chunk(args.minibatches):
                dist, value = agent(b_obs[mb])
                ratio = (dist.log_prob(b_act[mb]) - b_logp[mb]).exp()
                a = (b_adv[mb] - b_adv[mb].mean()) / (b_adv[mb].std() + 1e-8)
                pg = torch.max(-a * ratio, -a * ratio.clamp(1 - args.clip, 1 + args.clip)).mean()
                loss = pg + args.vf_coef * (value - b_ret[mb]).square().mean() - args.ent_coef * dist.entropy().mean()
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), 0.5)
                opt.step()
        mean_reward = float(buf_rew.mean())
        history.append(mean_reward)
        sps = (update + 1) * n * t / (time.perf_counter() - start)
        print(f"update {update + 1}: mean reward per step {mean_reward:+.3f}, {sps:.0f} env steps/s")
    envs.close()
    return {"mean_reward": history, "agent": agent}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(Args):
        kind = int if f.type in ("int", "int | None") else float if f.type == "float" else str
        p.add_argument(f"--{f.name}", type=kind, default=f.default)
    train(Args(**vars(p.parse_args())))


if __name__ == "__main__":
    main()
