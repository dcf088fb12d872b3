package lmx

import (
	"errors"
	"time"
)

// delay is a lock-delay in force on a key: no grant until it ends. The
// entry stays in the table meanwhile, so the timer's pointer to it holds.
type delay struct {
	until time.Time
	timer *time.Timer
}

// delayLocked starts, or lengthens, the lock-delay of e after l ended for
// reason: only an end the holder did not choose (expiry, lost session,
// ForceUnlock) delays the key. It returns the key's entry, which it makes
// if l held the key alone (e nil): the delay needs one.
func (sh *shard) delayLocked(e *entry, l *Lease, reason error) *entry {
	d := sh.b.cfg.lockDelay
	if l.x != nil && l.x.lockDelay >= 0 {
		d = l.x.lockDelay
	}
	if d <= 0 || !(errors.Is(reason, ErrExpired) || errors.Is(reason, ErrSessionLost) || errors.Is(reason, ErrForced)) {
		return e
	}
	if e == nil {
		e = sh.newEntryLocked(l.key, 1)
	}
	until := time.Now().Add(d)
	switch {
	case e.delay == nil:
		e.delay = &delay{until: until}
		e.delay.timer = time.AfterFunc(d, func() { sh.b.bg.run(func() { sh.endDelay(e) }) })
	case until.After(e.delay.until):
		e.delay.until = until
		e.delay.timer.Reset(d)
	}
	return e
}

// endDelay lifts e's lock-delay and hands the key on.
func (sh *shard) endDelay(e *entry) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if e.delay == nil || time.Now().Before(e.delay.until) {
		return // lengthened: its timer was reset
	}
	e.delay = nil
	sh.grantNextLocked(e)
	sh.freeIfIdleLocked(e)
}
