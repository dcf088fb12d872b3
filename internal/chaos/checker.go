// Package chaos is lmx's chaos harness: a broker and worker processes that
// lock shared keys while faults are injected on a seeded schedule, and a
// checker, in the harness's process, that every worker tells synchronously
// when it enters and leaves a key's critical section and how its Unlock
// went, so that the checker's order of events is their real-time order.
//
// A double grant is two holders inside a key's critical section at once,
// beyond what the key admits, whose Unlocks both succeeded: the broker held
// both leases from their grants until their Releases arrived, so it held
// them together. Holders whose leases a fault ended (TTL, ForceUnlock,
// preemption, a lost session) may overlap another holder, since they
// cannot know at once, or enter after their key's next grant; their Unlock
// then fails, and the overlap is no violation. On the clean keys, which no
// fault but a broker restart touches, any overlap at all is one, but for
// an overlap with a holder whose session was lost while its worker or the
// broker was starved of CPU (see stall.go): that one is counted apart.
package chaos

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"
)

// Kind says how many holders a key admits.
type Kind uint8

// The kinds of key.
const (
	Mutex     Kind = iota // one holder
	Semaphore             // Limit holders
	RW                    // many readers, or one writer
)

// A KeySpec is one key the workers lock.
type KeySpec struct {
	Name  string
	Kind  Kind
	Limit int  // a Semaphore's
	Clean bool // no fault but a broker restart touches it
}

// Outcome is how a holder's Unlock went, as a worker reports it.
type Outcome string

// The outcomes.
const (
	Released   Outcome = "released"   // Unlock returned nil and Err is ErrReleased
	BadRelease Outcome = "badrelease" // Unlock returned nil, yet Err is not ErrReleased
	Expired    Outcome = "expired"
	Forced     Outcome = "forced"
	Preempted  Outcome = "preempted"
	Lost       Outcome = "lost"    // the session was lost
	NotHeld    Outcome = "notheld" // ErrNotHeld without a reason
	Unknown    Outcome = "unknown" // any other error: the broker may or may not have released
	Killed     Outcome = "killed"  // the worker was killed before it unlocked
)

// The kinds of violation the checker counts.
const (
	DoubleGrant   = "double-grant"   // two holders of a mutex, or a writer beside anyone, both confirmed
	OverLimit     = "over-limit"     // more confirmed holders of a semaphore than its limit
	CleanOverlap  = "clean-overlap"  // any overlap on a clean key a restart does not excuse
	TokenOrder    = "token-order"    // a token not above one confirmed released before its holder entered
	RestartToken  = "restart-token"  // a token after a broker restart not above every token before it
	UnlockErr     = "unlock-err"     // Unlock returned nil, yet the lease did not report ErrReleased
	Liveness      = "liveness"       // keys not free, Locks stuck, Stats not empty after the faults
	BrokerDied    = "broker-died"    // the broker exited by itself
	BrokerLeak    = "broker-leak"    // broker goroutines or RSS above their baseline
	WorkerFailure = "worker-failure" // a worker exited with an error of its own
)

// Kinds lists the violation kinds in the order a summary prints them.
var Kinds = []string{DoubleGrant, OverLimit, CleanOverlap, TokenOrder, RestartToken, UnlockErr, Liveness, BrokerDied, BrokerLeak, WorkerFailure}

// A Checker receives the workers' reports. Its methods are safe for
// concurrent use; each runs whole under one lock, so that the order in
// which reports take effect is the order in which they arrived.
type Checker struct {
	mu           sync.Mutex
	keys         map[string]*keyState
	holders      map[int]*holder
	byWorker     map[string]map[int]*holder
	next         int
	epoch        int    // broker incarnations ended so far
	maxToken     uint64 // the largest token seen
	outcomes     map[Outcome]int
	released     map[string]int // holds released, by worker
	violations   map[string]int
	examples     []string // the first few violations, described
	timeout      time.Duration
	stalls       map[string][]interval // by worker, and "broker": see Stalled
	lost         []*overlap            // clean overlaps a lost session may excuse: see Settle
	starvedHolds map[int]bool          // the holders Settle excused, by id
}

type keyState struct {
	spec    KeySpec
	present map[int]*holder
	cycles  int // holds released
	// The largest token of a holder whose release was confirmed, of any
	// holder and of writers (for readers of an RW key).
	released, releasedW uint64
}

type holder struct {
	id      int
	worker  string
	key     *keyState
	token   uint64
	shared  bool
	epoch   int
	floor   uint64     // its token must be above this: see Enter
	outcome Outcome    // "" until reported
	pend    []*overlap // overlaps that wait for this holder's outcome
	entered time.Time  // when its Enter arrived
	ended   time.Time  // when its outcome arrived
}

// An overlap is a holder that entered while others were inside: a
// violation once need of them are found to have held the key then.
type overlap struct {
	kind     string
	who      *holder
	with     []*holder
	need     int
	reported bool // or left to Settle
	epoch    int  // the broker's epoch when it was resolved
}

// NewChecker returns a checker of keys locked through a broker whose
// session timeout is timeout.
func NewChecker(keys []KeySpec, timeout time.Duration) *Checker {
	c := &Checker{
		timeout:      timeout,
		stalls:       make(map[string][]interval),
		starvedHolds: make(map[int]bool),
		keys:         make(map[string]*keyState),
		holders:      make(map[int]*holder),
		byWorker:     make(map[string]map[int]*holder),
		outcomes:     make(map[Outcome]int),
		released:     make(map[string]int),
		violations:   make(map[string]int),
	}
	for _, k := range keys {
		c.keys[k.Name] = &keyState{spec: k, present: make(map[int]*holder)}
	}
	return c
}

// Enter records that worker entered key's critical section holding a lease
// with token (shared for a read hold), and returns the holder's id.
func (c *Checker) Enter(worker, key string, token uint64, shared bool) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := c.keys[key]
	if k == nil {
		return 0, fmt.Errorf("chaos: unknown key %q", key)
	}
	c.next++
	h := &holder{id: c.next, worker: worker, key: k, token: token, shared: shared, epoch: c.epoch, entered: time.Now()}
	c.holders[h.id] = h
	if c.byWorker[worker] == nil {
		c.byWorker[worker] = make(map[int]*holder)
	}
	c.byWorker[worker][h.id] = h
	c.maxToken = max(c.maxToken, token)

	// A semaphore's slots are granted in any order relative to other
	// slots' releases, and a reader's relative to other readers'. The
	// floor is checked once the Unlock has shown the lease was held: a
	// lease ended by a fault may be entered after its key's next grant.
	if k.spec.Kind != Semaphore {
		h.floor = k.released
		if shared {
			h.floor = k.releasedW
		}
	}

	var with []*holder
	need := 1
	for _, o := range k.present {
		if k.spec.Kind != RW || !shared || !o.shared {
			with = append(with, o)
		}
	}
	if k.spec.Kind == Semaphore {
		need = k.spec.Limit
	}
	if len(with) >= need {
		kind := DoubleGrant
		switch {
		case k.spec.Clean:
			kind = CleanOverlap
		case k.spec.Kind == Semaphore:
			kind = OverLimit
		}
		ov := &overlap{kind: kind, who: h, with: with, need: need}
		h.pend = append(h.pend, ov)
		for _, o := range with {
			o.pend = append(o.pend, ov)
		}
	}
	k.present[h.id] = h
	return h.id, nil
}

// Exit records that holder id left its critical section, before Unlock.
func (c *Checker) Exit(id int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	h := c.holders[id]
	if h == nil {
		return fmt.Errorf("chaos: unknown holder %d", id)
	}
	delete(h.key.present, id)
	return nil
}

// Unlocked records how holder id's Unlock went.
func (c *Checker) Unlocked(id int, o Outcome) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	h := c.holders[id]
	if h == nil {
		return fmt.Errorf("chaos: unknown holder %d", id)
	}
	c.finish(h, o)
	return nil
}

// finish records h's outcome o and settles the overlaps that waited for it.
func (c *Checker) finish(h *holder, o Outcome) {
	delete(h.key.present, h.id)
	delete(c.holders, h.id)
	delete(c.byWorker[h.worker], h.id)
	h.outcome, h.ended = o, time.Now()
	c.outcomes[o]++
	if (o == Released || o == BadRelease) && h.token <= h.floor {
		c.violate(TokenOrder, "%s held %s with token %d, not above %d released before it entered", h.worker, h.key.spec.Name, h.token, h.floor)
	}
	switch o {
	case BadRelease:
		c.violate(UnlockErr, "%s: Unlock of %s (token %d) returned nil, yet Err is not ErrReleased", h.worker, h.key.spec.Name, h.token)
	case Released:
		c.released[h.worker]++
		h.key.cycles++
		h.key.released = max(h.key.released, h.token)
		if !h.shared {
			h.key.releasedW = max(h.key.releasedW, h.token)
		}
	}
	for _, ov := range h.pend {
		c.resolve(ov)
	}
	h.pend = nil
}

// resolve reports ov once its holder and need of the holders it
// overlapped are known to have held the key through it. A clean overlap
// that needs a holder whose session was lost waits for Settle.
func (c *Checker) resolve(ov *overlap) {
	if ov.reported || !ov.held(c.epoch, nil) {
		return
	}
	ov.reported, ov.epoch = true, c.epoch
	if ov.kind == CleanOverlap && !ov.held(c.epoch, func(h *holder) bool { return h.outcome == Lost }) {
		c.lost = append(c.lost, ov)
		return
	}
	c.report(ov)
}

// held reports whether ov's holder and need of the holders it overlapped
// held the key through it, with the broker restarted epoch times, counting
// none that excused says had lost it (excused may be nil).
func (ov *overlap) held(epoch int, excused func(*holder) bool) bool {
	through := func(h *holder) bool {
		return h.heldThrough(ov.kind == CleanOverlap, epoch) && (excused == nil || !excused(h))
	}
	if !through(ov.who) {
		return false
	}
	held := 0
	for _, o := range ov.with {
		if through(o) {
			held++
		}
	}
	return held >= ov.need
}

// report counts ov as a violation.
func (c *Checker) report(ov *overlap) {
	var names []string
	for _, o := range ov.with {
		names = append(names, fmt.Sprintf("%s(token %d, %s)", o.worker, o.token, orPending(o.outcome)))
	}
	c.violate(ov.kind, "%s entered %s (token %d, %s) beside %s", ov.who.worker, ov.who.key.spec.Name, ov.who.token, ov.who.outcome, strings.Join(names, ", "))
}

func orPending(o Outcome) Outcome {
	if o == "" {
		return "inside"
	}
	return o
}

// heldThrough reports whether the holder's lease was held by the broker
// while a later holder entered beside it, with the broker restarted epoch
// times: its Unlock succeeded. On a clean key, nothing but a broker
// restart excuses a holder here: any outcome but a lost session across a
// restart counts as held.
func (h *holder) heldThrough(clean bool, epoch int) bool {
	switch {
	case h.outcome == Released, h.outcome == BadRelease:
		return true
	case !clean, h.outcome == "":
		return false
	}
	return !(h.outcome == Lost && epoch > h.epoch)
}

// Settle decides the clean overlaps left to it, those that are violations
// only if the holders whose sessions were lost count as held: each is one
// unless, counting none of those that starved excuses (see starved), too
// few holders are left; the holders it excused it counts apart (see
// Starved). A stall's report may arrive after the outcome it explains, so
// the harness settles once its workers and broker have stopped.
func (c *Checker) Settle() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ov := range c.lost {
		if ov.held(ov.epoch, c.starved) {
			c.report(ov)
			continue
		}
		for _, h := range append([]*holder{ov.who}, ov.with...) {
			if c.starved(h) {
				c.starvedHolds[h.id] = true
			}
		}
	}
	c.lost = nil
}

// Starved returns how many holds of clean keys Settle excused: each lost
// its session while its worker or the broker was starved of CPU, and
// another holder entered beside it.
func (c *Checker) Starved() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.starvedHolds)
}

// WorkerKilled records that worker was killed: its holders never unlock.
func (c *Checker) WorkerKilled(worker string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, h := range c.byWorker[worker] {
		c.finish(h, Killed)
	}
}

// BrokerRestarted records that the broker was killed and started again:
// leases of the old one are lost; tokens must now exceed every token seen.
// It returns the largest token seen so far.
func (c *Checker) BrokerRestarted() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.epoch++
	return c.maxToken
}

// Violation records a violation found outside the checker's own rules (a
// restart's token, liveness, the broker's health).
func (c *Checker) Violation(kind, format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.violate(kind, format, args...)
}

func (c *Checker) violate(kind, format string, args ...any) {
	c.violations[kind]++
	if len(c.examples) < 20 {
		c.examples = append(c.examples, kind+": "+fmt.Sprintf(format, args...))
	}
}

// Counts returns the outcomes, the holds released by each worker and the
// violations counted so far, and the first violations described.
func (c *Checker) Counts() (outcomes map[Outcome]int, released, violations map[string]int, examples []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.outcomes), maps.Clone(c.released), maps.Clone(c.violations), slices.Clone(c.examples)
}

// inside returns the tokens of key's holders inside their critical
// sections.
func (c *Checker) inside(key string) []uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var tokens []uint64
	for _, h := range c.keys[key].present {
		tokens = append(tokens, h.token)
	}
	return tokens
}

// insideClean reports whether a holder of worker is inside a clean key's
// critical section.
func (c *Checker) insideClean(worker string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, h := range c.byWorker[worker] {
		if _, in := h.key.present[h.id]; in && h.key.spec.Clean {
			return true
		}
	}
	return false
}

// keyCycles returns each key's count of holds released.
func (c *Checker) keyCycles() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := make(map[string]int)
	for name, k := range c.keys {
		m[name] = k.cycles
	}
	return m
}
