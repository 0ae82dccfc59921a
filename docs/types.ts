// Generated from the pydantic models by `task-history schema --typescript`; do not edit.
// The original TypeScript types had a `TaskBuildHistory` type whose `metadata` was a string
// holding JSON. Entries read from this service (`task-history show --json`, `export`, the HTTP
// API) carry `metadata` as the object itself: they are `TaskBuildHistoryEntry`, and
// `JSON.stringify(entry.metadata)` gives the original string. Events may send either form.

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
