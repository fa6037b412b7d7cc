"""``genie-env play``: step a Genie world with the keyboard in a pygame window.

Keys
    1-8             latent action 0-7
    arrows / WASD   the latent actions mapped to left / right / up (jump) / down; the bundled
                    model ships this map (``action_map.json``, made by ``genie-env export`` from
                    the true CoinRun actions); without one, left/right/up/down = 0/1/2/3
    (no key)        the "noop" action of the map, else 0: a world always needs an action
    r               reset to a new prompt
    v               start / stop recording; the clip is written to ``--record`` (mp4 or gif)
    Esc, q          quit

The window shows the frames per second and the current action.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

import genie_env  # noqa: F401  (registers Genie-v0)
from genie_env.bundled import load_action_map
from genie_env.cli import add_world_arguments, check_positive
from genie_env.video import write_video

DEFAULT_MAP = {"left": 0, "right": 1, "up": 2, "down": 3, "noop": 0}


def direction_map(dynamics_path) -> dict[str, int]:
    """The direction -> latent action map beside a checkpoint (or the bundled one), else a default."""
    return {**DEFAULT_MAP, **(load_action_map(dynamics_path) or {})}


def key_bindings(pygame, action_map: dict[str, int], num_actions: int) -> dict[int, int]:
    keys = {getattr(pygame, f"K_{i + 1}"): i for i in range(min(num_actions, 9))}
    for name, ks in (("left", ("K_LEFT", "K_a")), ("right", ("K_RIGHT", "K_d")),
                     ("up", ("K_UP", "K_w")), ("down", ("K_DOWN", "K_s"))):
        for k in ks:
            keys[getattr(pygame, k)] = action_map[name] % num_actions
    return keys


def play(env, scale: int = 8, record: str | Path = "genie_play.mp4", fps: int = 10,
         script: list[int] | None = None, max_steps: int | None = None, action_map: dict | None = None) -> dict:
    """Run the play loop until quit. ``script`` (pygame key codes, one per frame) drives it
    without a person, for tests and demos. Returns counts of steps, resets and recordings."""
    import pygame
    pygame.display.init()
    pygame.font.init()
    unwrapped = env.unwrapped
    n = unwrapped.action_space.n
    amap = action_map or direction_map(None)
    bindings = key_bindings(pygame, amap, n)
    noop = amap.get("noop", 0) % n
    h, w = unwrapped.observation_space.shape[:2]
    screen = pygame.display.set_mode((w * scale, h * scale + 24))
    pygame.display.set_caption("Genie-v0: 1-8 / arrows act, r reset, v record, q quit")
    font = pygame.font.Font(None, 22)
    clock = pygame.time.Clock()
    obs, _ = env.reset()
    stats = {"steps": 0, "resets": 1, "recordings": 0}
    recording: list[np.ndarray] | None = None
    held: int | None = None
    shown_fps = 0.0
    scripted, queue = script is not None, list(script or [])
    running = True
    while running:
        t0 = time.perf_counter()
        if queue:
            key = queue.pop(0)
            pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=key, mod=0, unicode="", scancode=0))
            pygame.event.post(pygame.event.Event(pygame.KEYUP, key=key, mod=0, unicode="", scancode=0))
        action, reset = None, False
        for event in pygame.event.get():
            if event.type == pygame.QUIT:
                running = False
            elif event.type == pygame.KEYDOWN:
                if event.key in (pygame.K_ESCAPE, pygame.K_q):
                    running = False
                elif event.key == pygame.K_r:
                    reset = True
                elif event.key == pygame.K_v:
                    if recording is None:
                        recording = [obs]
                    else:
                        write_video(record, np.stack(recording), fps=fps)
                        stats["recordings"] += 1
                        recording = None
                elif event.key in bindings:
                    action = held = bindings[event.key]
            elif event.type == pygame.KEYUP and event.key in bindings and bindings[event.key] == held:
                held = None
        if not running:
            break
        if reset:
            obs, _ = env.reset()
            stats["resets"] += 1
        else:
            action = action if action is not None else (held if held is not None else noop)
            obs, _, terminated, truncated, _ = env.step(action)
            stats["steps"] += 1
            if terminated or truncated:
                obs, _ = env.reset()
                stats["resets"] += 1
        if recording is not None:
            recording.append(obs)
        surf = pygame.transform.scale(pygame.surfarray.make_surface(obs.transpose(1, 0, 2)), (w * scale, h * scale))
        screen.fill((0, 0, 0))
        screen.blit(surf, (0, 0))
        label = f"{shown_fps:4.1f} FPS   action {action if action is not None else '-'}" + \
                ("   REC" if recording is not None else "")
        screen.blit(font.render(label, True, (255, 255, 255)), (6, h * scale + 4))
        pygame.display.flip()
        dt = time.perf_counter() - t0
        shown_fps = 0.9 * shown_fps + 0.1 / max(dt, 1e-6) if shown_fps else 1 / max(dt, 1e-6)
        if max_steps is not None and stats["steps"] >= max_steps:
            break
        if scripted and not queue:
            break
        clock.tick(fps)
    if recording is not None and len(recording) > 1:
        write_video(record, np.stack(recording), fps=fps)
        stats["recordings"] += 1
    pygame.display.quit()
    return stats


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_world_arguments(p)
    p.add_argument("--scale", type=int, default=8, help="window pixels per frame pixel")
    p.add_argument("--fps", type=int, default=10, help="frame-rate cap")
    p.add_argument("--record", default="genie_play.mp4", help="where the v key writes its recording")
    p.add_argument("--seed", type=int, default=None)


def run(args: argparse.Namespace) -> int:
    check_positive(args, "scale", "fps")
    env = gym.make("Genie-v0", tokenizer_path=args.tokenizer_path, dynamics_path=args.dynamics_path,
                   prompt=args.prompt, device=args.device, maskgit_steps=args.maskgit_steps,
                   temperature=args.temperature, dtype=args.dtype, compile=args.compile,
                   action_guidance=args.action_guidance)
    if args.seed is not None:
        env.reset(seed=args.seed)
    stats = play(env, args.scale, args.record, args.fps, action_map=direction_map(args.dynamics_path))
    print(f"played {stats['steps']} steps, {stats['resets']} resets, {stats['recordings']} recordings")
    return 0
