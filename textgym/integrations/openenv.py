"""Any textgym env as an OpenEnv server, and the client that plays it.

`OpenEnv <https://pypi.org/project/openenv/>`_ is the Gymnasium-style
``reset``/``step``/``state`` protocol over HTTP and WebSocket that TRL and other
trainers speak.  This module builds on OpenEnv's own server library
(``openenv.core.create_app``: FastAPI, one env instance per WebSocket session,
``max_concurrent_envs`` sessions at most) and on its ``EnvClient``; it adds only
the textgym side:

* :class:`TextGymEnvironment`: an OpenEnv ``Environment`` around
  :class:`~textgym.wrappers.SequenceLevel`: one step is one whole answer (one
  turn in a multi-turn task), given as text or as token ids of the env's
  tokenizer.  Rewards and infos are exactly the in-process env's, and
  ``reset(seed=s)`` draws the sample that ``env.reset(seed=s)`` draws.
* :class:`TextAction`, :class:`TextObservation`, :class:`TextState`: its wire types.
* :func:`make_app`: the FastAPI app serving one env id.
* :class:`Server`: that app under uvicorn (``textgym serve`` runs it; ``start()``
  runs it in a background thread, for notebooks and tests).
* :class:`TextGymClient`: an OpenEnv ``EnvClient`` for it (async, or ``.sync()``).

The env runs in the server process, sandboxed code execution included: the
trainer holds the model, env servers on other machines run the sandboxes.

Example:
    >>> from textgym.integrations.openenv import Server, TextGymClient
    >>> with Server("textgym/Copy-v0", port=0, model="tiny-random") as server:
    ...     with TextGymClient(base_url=server.url).sync() as env:
    ...         result = env.reset(seed=0)
    ...         result = env.step(result.observation.info["references"][0])
    >>> result.reward, result.done
    (1.0, True)

Requires the ``serve`` extra: ``pip install 'textgym[serve]'``.
"""

from __future__ import annotations

import dataclasses
import functools
import socket
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import gymnasium as gym
import numpy as np

import textgym
from textgym.errors import ConfigError, DependencyNotInstalled, ResetNeeded, TextGymError
from textgym.wrappers import SequenceLevel

try:
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from openenv.core import Action, EnvClient, Environment, Observation, State, create_app
    from openenv.core.client_types import StepResult
    from openenv.core.env_server.types import EnvironmentMetadata
    from pydantic import Field, StrictInt, StrictStr, model_validator
    from pydantic_core import PydanticCustomError
    from websockets.exceptions import ConnectionClosed
except ImportError as err:  # pragma: no cover - exercised by tests that hide openenv
    raise DependencyNotInstalled(f"serving envs needs OpenEnv ({err}): pip install 'textgym[serve]'") from err

MAX_ANSWER_CHARS = 100_000
"""Longest answer text (characters) or token-id list a step accepts; the env keeps at most ``max_new_tokens`` tokens."""

RESET_KWARGS = ("seed", "episode_id", "options")

TokenId = Annotated[StrictInt, Field(ge=0, le=2**31 - 1)]


class TextAction(Action):
    """One whole answer: ``text``, or ``token_ids`` of the env's tokenizer (exactly one of them).

    Either way the answer is cut to the env's ``max_new_tokens`` tokens and
    ended with EOS when there is room, as :class:`~textgym.wrappers.SequenceLevel` does.

    Example:
        >>> TextAction(text="Bonjour").text
        'Bonjour'
    """

    text: StrictStr | None = Field(default=None, max_length=MAX_ANSWER_CHARS, description="the answer as text")
    token_ids: list[TokenId] | None = Field(
        default=None, max_length=MAX_ANSWER_CHARS, description="the answer as token ids of the env's tokenizer"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> TextAction:
        if (self.text is None) == (self.token_ids is None):
            # a PydanticCustomError, not a ValueError: its error details stay JSON-serialisable for the error response
            raise PydanticCustomError(
                "answer_required", "give exactly one of 'text' (a string) and 'token_ids' (a list of ints)"
            )
        return self


class TextObservation(Observation):
    """What the agent sees: the prompt to answer, and after a step the reward (``reward``, ``done`` inherited).

    ``info`` is the in-process env's ``info`` made JSON-safe (``sample_id``,
    ``prompt``, ``references``; at the end ``generated_text`` and
    ``metrics``; per turn ``turn``, ``turn_metrics``; task details such as
    ``execution``), without the token-level ``action_mask``.
    """

    prompt_text: str = Field(default="", description="the context the next answer continues, as the model sees it: the "
                             "prompt (chat template applied), and in a multi-turn episode the conversation so far")
    prompt_ids: list[int] = Field(default_factory=list, description="prompt_text's token ids (the env's tokenizer)")
    truncated: bool = Field(default=False, description="the episode ended by a length limit, not by EOS")
    info: dict[str, Any] = Field(default_factory=dict, description="the in-process env's info, JSON-safe")


class TextState(State):
    """Where a session stands (``episode_id`` and ``step_count``, the answers given so far, inherited)."""

    env_id: str = Field(description="the served env id")
    sample_id: str | None = Field(default=None, description="the episode's sample; None before the first reset")
    done: bool = Field(default=False, description="the episode has ended: reset to start another")


def jsonable(value: Any) -> Any:
    """``value`` with numpy arrays and scalars, tuples and dataclasses turned into JSON types.

    Example:
        >>> jsonable({"a": np.float32(0.5), "b": (np.arange(2),)})
        {'a': 0.5, 'b': [[0, 1]]}
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


class TextGymEnvironment(Environment[TextAction, TextObservation, TextState]):
    """A registered textgym env as an OpenEnv ``Environment``, one answer per step.

    Every session of the server gets its own instance (``gym.make(env_id,
    **env_kwargs)`` wrapped in :class:`~textgym.wrappers.SequenceLevel`), so
    sessions never share episode state.

    Example:
        >>> env = TextGymEnvironment("textgym/Copy-v0", model="tiny-random")
        >>> obs = env.reset(seed=0)
        >>> env.step(TextAction(text=obs.info["references"][0])).reward
        1.0
    """

    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self, env_id: str, **env_kwargs: Any) -> None:
        super().__init__()
        self.env_id = env_id
        # no PassiveEnvChecker: after a first reset that raised (say, a bad options index) it fails the first step
        env = gym.make(env_id, **{"disable_env_checker": True, **env_kwargs})
        self._env = SequenceLevel(env, max_chars=MAX_ANSWER_CHARS)
        self._setup = self._env.unwrapped.setup
        self._state = TextState(env_id=env_id)
        self._prompt_text = ""

    def reset(
        self, seed: int | None = None, episode_id: str | None = None, options: dict[str, Any] | None = None, **kwargs: Any
    ) -> TextObservation:
        """Start an episode: ``seed`` as in ``env.reset(seed=...)``; ``options`` ``{"index": i}`` or ``{"sample_id": s}``."""
        if kwargs:
            raise ConfigError(f"unknown reset argument(s) {sorted(kwargs)}; allowed: {list(RESET_KWARGS)}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ConfigError(f"seed must be a non-negative integer or null, got {seed!r}")
        if options is not None and not isinstance(options, dict):
            raise ConfigError(f"options must be an object such as {{'index': 3}}, got {options!r}")
        obs, info = self._env.reset(seed=seed, options=options)
        self._state = TextState(
            env_id=self.env_id, episode_id=episode_id or str(uuid.uuid4()), sample_id=info["sample_id"]
        )
        return self._observation(obs, info, reward=None, terminated=False, truncated=False)

    def step(self, action: TextAction, timeout_s: float | None = None) -> TextObservation:
        """Play one whole answer (``timeout_s`` is OpenEnv's; the task's own limits, e.g. the sandbox's, apply)."""
        if self._state.sample_id is None:
            raise ResetNeeded("step before reset: send a reset first")
        if self._state.done:
            raise ResetNeeded("the episode has ended; send a reset to start the next one")
        answer = action.text if action.text is not None else action.token_ids
        obs, reward, terminated, truncated, info = self._env.step(answer)
        self._state.step_count += 1
        self._state.done = terminated or truncated
        return self._observation(obs, info, reward=float(reward), terminated=terminated, truncated=truncated)

    def _observation(
        self, obs: dict[str, np.ndarray], info: dict[str, Any], reward: float | None, terminated: bool, truncated: bool
    ) -> TextObservation:
        self._prompt_text = info.get("prompt_text", self._prompt_text) if "turn" not in info else self._prompt_text
        context = obs["attention_mask"] == 1
        going_on = "turn" in info and not (terminated or truncated)  # a multi-turn episode's next answer is asked
        if not going_on:
            context[self._setup.max_prompt_tokens :] = False  # the prompt alone
        ids = obs["input_ids"][context].tolist()
        return TextObservation(
            prompt_text=self._setup.tokenizer.decode(ids) if going_on else self._prompt_text,
            prompt_ids=ids,
            truncated=truncated,
            info=jsonable({k: v for k, v in info.items() if k != "action_mask"}),
            reward=reward,
            done=terminated or truncated,
        )

    @property
    def state(self) -> TextState:
        return self._state

    def get_metadata(self) -> EnvironmentMetadata:
        entry = textgym.ENVS.get(self.env_id)
        return EnvironmentMetadata(
            name=self.env_id,
            description=entry.description if entry is not None else self.env_id,
            version=textgym.__version__,
        )

    def close(self) -> None:
        self._env.close()


def _error_handler(status_code: int, hint: str = ""):
    async def handle(request: Request, err: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"{err}{hint}", "error": type(err).__name__}, status_code=status_code)

    return handle


def make_app(env_id: str, *, num_envs: int = 8, **env_kwargs: Any) -> FastAPI:
    """The OpenEnv FastAPI app serving ``env_id``: WebSocket sessions at ``/ws``, and ``/health``, ``/schema``, ...

    ``num_envs`` bounds the concurrent sessions (each has its own env);
    ``env_kwargs`` go to ``gym.make``.  One env is built here, so a bad id or
    argument fails now, not at the first session.  OpenEnv's HTTP ``/reset``
    and ``/step`` are stateless (a fresh env per request): play episodes over
    the WebSocket (:class:`TextGymClient`).
    """
    if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
        raise ConfigError(f"num_envs must be a positive integer, got {num_envs!r}")
    TextGymEnvironment(env_id, **env_kwargs).close()
    app = create_app(
        functools.partial(TextGymEnvironment, env_id, **env_kwargs),
        TextAction,
        TextObservation,
        env_name=env_id.replace("/", "-"),
        max_concurrent_envs=num_envs,
        state_cls=TextState,
    )
    http_hint = " (OpenEnv's HTTP /step runs a fresh env per request: play episodes over the WebSocket /ws)"
    for reset_needed in (ResetNeeded, gym.error.ResetNeeded):
        app.add_exception_handler(reset_needed, _error_handler(409, http_hint))
    app.add_exception_handler(TextGymError, _error_handler(400))
    app.add_exception_handler(gym.error.Error, _error_handler(400))
    return app


class Server:
    """:func:`make_app` under uvicorn on ``host:port`` (``port=0``: a free port; :attr:`url` tells which).

    The port is bound and listening when the constructor returns.  ``run()``
    serves until SIGINT/SIGTERM (``textgym serve``); ``start()``/``stop()``
    (or ``with Server(...) as server:``) serve from a background thread.

    Example:
        >>> with Server("textgym/Copy-v0", port=0, model="tiny-random") as server:
        ...     server.url.startswith("http://127.0.0.1:")
        True
    """

    def __init__(
        self, env_id: str, *, host: str = "127.0.0.1", port: int = 8000, num_envs: int = 8, **env_kwargs: Any
    ) -> None:
        self.env_id = env_id
        app = make_app(env_id, num_envs=num_envs, **env_kwargs)
        self._socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, port))
        except OSError as err:
            self._socket.close()
            raise ConfigError(f"cannot listen on {host}:{port}: {err}; pick another port (0: any free one)") from err
        self._socket.listen()  # connections wait in the backlog until uvicorn accepts them
        bound = self._socket.getsockname()[1]
        self.url = f"http://[{host}]:{bound}" if ":" in host else f"http://{host}:{bound}"
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)
        self._uvicorn = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        """Serve in this thread until SIGINT or SIGTERM (then sessions are closed, their envs too)."""
        self._uvicorn.run(sockets=[self._socket])

    def start(self, timeout: float = 30.0) -> Server:
        """Serve from a daemon thread; returns once the server accepts sessions."""
        self._thread = threading.Thread(target=self.run, name=f"textgym-serve-{self.env_id}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise TextGymError(f"the server for {self.env_id} did not start within {timeout} s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Close every session and stop serving (the thread of ``start()`` ends)."""
        self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join()
        self._socket.close()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class ServerError(TextGymError, RuntimeError):
    """The server answered a request with an error; ``code`` is OpenEnv's (``VALIDATION_ERROR``, ...)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.code = data.get("code", "UNKNOWN")
        self.data = data
        details = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())) or 'action'}: {e.get('msg')}" for e in data.get("errors", ())
        )
        message = data.get("message", "unknown error") + (f": {details}" if details else "")
        super().__init__(f"server error {self.code}: {message}")


class TextGymClient(EnvClient[TextAction, TextObservation, TextState]):
    """OpenEnv client of a textgym server: one WebSocket session, hence one env of its own.

    ``step`` takes a :class:`TextAction`, a string (the answer text) or a
    sequence of token ids; ``reset`` takes ``seed``, ``options`` and
    ``episode_id``.  Async by default; ``.sync()`` gives the blocking client.
    A request the server refuses raises :class:`ServerError` with its reason.

    Example:
        >>> with Server("textgym/Copy-v0", port=0, model="tiny-random") as server:
        ...     with TextGymClient(base_url=server.url).sync() as env:
        ...         first = env.reset(seed=0).observation.info["sample_id"]
        ...         again = env.reset(seed=0).observation.info["sample_id"]
        >>> first == again
        True
    """

    def _step_payload(self, action: TextAction | str | Sequence[int] | Mapping[str, Any]) -> dict[str, Any]:
        """The action as sent: a string is the answer text, a sequence its token ids, a mapping the fields as they are."""
        if isinstance(action, TextAction):
            return action.model_dump(exclude_none=True)
        if isinstance(action, str):
            return {"text": action}
        if isinstance(action, Mapping):
            return dict(action)
        return {"token_ids": np.asarray(action).tolist()}

    def _parse_result(self, payload: dict[str, Any]) -> StepResult[TextObservation]:
        fields = {**payload.get("observation", {}), "reward": payload.get("reward"), "done": payload.get("done", False)}
        observation = TextObservation(**fields)
        return StepResult(observation=observation, reward=observation.reward, done=observation.done)

    def _parse_state(self, payload: dict[str, Any]) -> TextState:
        return TextState.model_validate(payload)

    async def _send_and_receive(self, message: dict[str, Any]) -> dict[str, Any]:
        """EnvClient's request/response, raising :class:`ServerError` with the server's whole explanation."""
        try:
            await self._send(message)
        except ConnectionClosed:  # a refused session (at capacity) sends its error, then closes: read it
            pass
        response = await self._receive()
        if response.get("type") == "error":
            raise ServerError(response.get("data", {}))
        return response
