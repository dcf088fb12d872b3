package lmx

import (
	"slices"
	"time"
)

// Preemption, done safely: a waiter asked with Preempt that reaches the head
// of its queue revokes the holders of lower priority in its way (their
// Revoked channels close), and after its grace period ends those that have
// not let go with ErrPreempted. Tokens keep fencing: the waiter's grant gets
// a new, higher token, so a preempted holder that writes late is refused.
//
// Starvation: priority order alone would let a stream of high-priority
// requests starve a low-priority waiter forever. So a waiter is overtaken by
// at most maxBypass later requests of higher priority; after that, requests
// queue behind it whatever their priority.

// maxBypass bounds how often a waiter is overtaken.
const maxBypass = 64

// preemption is the state of a waiter asked with Preempt.
type preemption struct {
	grace   time.Duration
	victims []*Lease // the holders revoked for it, while a round is on
}

// maybePreemptLocked starts a round of preemption for the head of e's queue
// if it asked for one, none is on, and the holders in its way may all be
// preempted.
func (sh *shard) maybePreemptLocked(e *entry) {
	w := e.waiters.head
	if w == nil || w.x == nil || w.x.preempt == nil || w.x.preempt.victims != nil {
		return
	}
	victims := e.victims(w)
	if len(victims) == 0 {
		return
	}
	p := w.x.preempt
	p.victims = victims
	for _, v := range victims {
		v.revokeNow()
		if hook := v.hook(); hook != nil {
			hook.revoked(v)
		}
	}
	time.AfterFunc(p.grace, func() { sh.b.bg.run(func() { sh.preemptDue(w) }) })
}

// victims returns the holders that must go for w to fit, fewest and lowest
// in priority first, or nil if one of them may not be preempted.
func (e *entry) victims(w *Lease) []*Lease {
	var shared, excl []*Lease
	for h := e.holders.head; h != nil; h = h.next {
		if h.shared {
			shared = append(shared, h)
		} else {
			excl = append(excl, h)
		}
	}
	var need []*Lease
	if w.shared {
		need = excl
	} else {
		need = shared
		if excess := len(excl) - int(e.limit) + 1; excess > 0 {
			// The lowest priorities go first; among equals, the newest.
			slices.Reverse(excl)
			slices.SortStableFunc(excl, func(a, b *Lease) int { return int(a.prio()) - int(b.prio()) })
			need = append(need, excl[:excess]...)
		}
	}
	for _, v := range need {
		if v.noPreempt || v.prio() >= w.prio() {
			return nil
		}
	}
	return need
}

// preemptDue ends the revoked holders that have not let go within w's grace
// period, and hands the key on.
func (sh *shard) preemptDue(w *Lease) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	p := w.x.preempt
	victims := p.victims
	p.victims = nil
	if w.state != stateWaiting {
		return // granted, or gone
	}
	e := w.e
	for _, v := range victims {
		if v.state == stateHeld && v.e == e {
			sh.st.preemptions++
			sh.dropLocked(v, errPreempted)
		}
	}
	sh.grantNextLocked(e)
}

var errPreempted = lost(ErrPreempted)
