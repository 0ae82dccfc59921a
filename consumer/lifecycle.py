"""Clients used as `async with` blocks: opened on the way in, closed on the way out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self


class AsyncResource(ABC):
    """A client with an opening step and `close()`; `async with` runs both."""

    @abstractmethod
    async def _begin(self) -> None:
        """Open the client (each subclass names its own public verb: connect, open)."""

    @abstractmethod
    async def close(self) -> None:
        """Close the client; harmless when it is not open."""

    async def __aenter__(self) -> Self:
        """Open."""
        await self._begin()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close."""
        await self.close()
