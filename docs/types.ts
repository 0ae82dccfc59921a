// Generated from the pydantic models by `task-history schema --typescript`; do not edit.

/** What kind of event an entry records. */
export type TaskBuildHistoryContextType =
  | "chat_message"
  | "execution_step"
  | "agent_turn"
  | "setup_complete"
  | "error"
  | "status_change";

/** One stored entry: its nine fields. */
export interface TaskBuildHistory {
  id: string;
  task_id: string;
  workspace_id: string | null;
  session_id: string | null;
  context_type: TaskBuildHistoryContextType;
  content: string;
  metadata: Record<string, unknown> | null;
  created_at: string;
  expires_at: string;
}

/** One event as published: the JSON body of a message to the history exchange. */
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
