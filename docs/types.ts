// Generated from the pydantic models by `task-history schema --typescript`; do not edit.
// Entries read from this service (`task-history show --json`, `export`, the HTTP API) are
// `TaskBuildHistoryEntry`: `metadata` is the object itself. `TaskBuildHistory` is the original
// type of an entry, whose `metadata` is a string holding JSON: `JSON.stringify(entry.metadata)`
// gives it. Events may send either form.

/** What kind of event an entry records. */
export type TaskBuildHistoryContextType =
  | "chat_message"
  | "execution_step"
  | "agent_turn"
  | "setup_complete"
  | "error"
  | "status_change";

/**
 * One stored entry, its nine fields, as `task-history show --json`, `export` and the HTTP API
 * return it. Not the original `TaskBuildHistory` type: `metadata` is an object here, not a string
 * holding JSON.
 */
export interface TaskBuildHistoryEntry {
  id: string;
  task_id: string;
  workspace_id: string | null;
  session_id: string | null;
  context_type: TaskBuildHistoryContextType;
  content: string;
  /**
   * The object itself, or null. The original type had a string holding JSON:
   * `JSON.stringify(entry.metadata)` gives it.
   */
  metadata: Record<string, unknown> | null;
  created_at: string;
  expires_at: string;
}

/**
 * The original type of a stored entry, with `metadata` as a string holding JSON. This service
 * returns `TaskBuildHistoryEntry` (the object itself): convert one with `{ ...entry, metadata:
 * entry.metadata === null ? null : JSON.stringify(entry.metadata) }`.
 */
export interface TaskBuildHistory {
  id: string;
  task_id: string;
  workspace_id: string | null;
  session_id: string | null;
  context_type: TaskBuildHistoryContextType;
  content: string;
  /** A string holding a JSON object, or null. */
  metadata: string | null;
  created_at: string;
  expires_at: string;
}

/**
 * One event as published: the JSON body of a message to the history exchange. Validate it with
 * docs/event.schema.json; its description lists the rules the consumer adds.
 */
export interface CreateTaskBuildHistory {
  /** Idempotency key. Absent: the AMQP message_id if it is a UUID, else new. */
  id?: string | null;
  /** The task this entry belongs to; must exist. */
  task_id: string;
  workspace_id?: string | null;
  session_id?: string | null;
  context_type: TaskBuildHistoryContextType;
  content: string;
  /** A JSON object, or a string holding one (the original form), or null. */
  metadata?: Record<string, unknown> | string | null;
  /** RFC 3339 with an offset. Absent: when the consumer received the event. */
  created_at?: string | null;
}
