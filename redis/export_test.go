package redis

import "time"

// SetRecheck sets how long the waiters of lk wait for a message before they
// look again; call it before lk's first Lock.
func (lk *Locker) SetRecheck(d time.Duration) { lk.recheck = d }
