package redis

import "time"

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
