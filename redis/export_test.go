package redis

import (
	"context"
	"strings"
	"time"
)

// SetRecheck sets how long the waiters of lk wait for a message before they
// look again; call it before lk's first Lock.
func (lk *Locker) SetRecheck(d time.Duration) { lk.recheck = d }

// Unsure makes lk's session look unrefreshed since long ago, until its
// next refresh.
func (lk *Locker) Unsure() {
	lk.mu.Lock()
	defer lk.mu.Unlock()
	if lk.sess != nil {
		lk.sess.alive.Store(0)
	}
}

// The sources of the scripts of an uncontended cycle and a hand-off.
var AcquireLua, ReleaseLua = acquireLua, releaseLua

// Acquire runs the acquire script once more for the exclusive Limit 1
// request whose waiter record is rec, as a client's retry would, and
// returns its reply's kind.
func (lk *Locker) Acquire(ctx context.Context, key, rec string) (string, error) {
	id, _, _ := strings.Cut(rec, "|")
	v, err := lk.run(ctx, acquireScript, key, id, rec, 1, "0")
	if err != nil {
		return "", err
	}
	r, err := parseReply(v)
	return r.kind, err
}
