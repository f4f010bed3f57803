-- Every change of a task's status, attempt or cancel flag, written by
-- triggers in the same statement as the change itself, so the history can
-- never disagree with the task.
CREATE TABLE task_history (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    task_seq         INTEGER NOT NULL REFERENCES tasks (seq) ON DELETE CASCADE,
    at               INTEGER NOT NULL,
    attempt          INTEGER NOT NULL,
    status           TEXT    NOT NULL,
    agent_id         TEXT,
    error            TEXT,
    cancel_requested INTEGER NOT NULL
);

CREATE INDEX task_history_task ON task_history (task_seq, seq);

CREATE TRIGGER tasks_history_insert AFTER INSERT ON tasks
BEGIN
    INSERT INTO task_history (task_seq, at, attempt, status, agent_id, error, cancel_requested)
    VALUES (NEW.seq, NEW.updated_at, NEW.attempt, NEW.status, NEW.agent_id, NEW.error, NEW.cancel_requested);
END;

CREATE TRIGGER tasks_history_update AFTER UPDATE OF status, attempt, cancel_requested ON tasks
WHEN OLD.status IS NOT NEW.status OR OLD.attempt IS NOT NEW.attempt OR OLD.cancel_requested IS NOT NEW.cancel_requested
BEGIN
    INSERT INTO task_history (task_seq, at, attempt, status, agent_id, error, cancel_requested)
    VALUES (NEW.seq, NEW.updated_at, NEW.attempt, NEW.status, NEW.agent_id, NEW.error, NEW.cancel_requested);
END;
