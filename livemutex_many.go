package lmx

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
)

// live-mutex's multi-key locks (acquire-many and release-many, from its
// Broker1), served on the table as LockAll is: see LIVEMUTEX.md.

// lmMaxManyKeys is the most keys one acquire-many takes, as in live-mutex.
const lmMaxManyKeys = 64

// An lmMany is one acquire-many request and, once granted, its lock. It
// takes its keys as LockAll does: one at a time in canonical order, so that
// requests whose keys overlap never deadlock, each key queued FIFO with
// every other request for it. The client hears of the grant only once it
// holds them all; a failure gives back those it took. It is the leaseHook
// of its keys' leases, its parts.
type lmMany struct {
	c    *lmConn
	id   string   // the request's uuid, and the lock's lockUuid
	keys []string // canonical order
	req  request
	wait bool

	parts   []*Lease    // granted, in key order; guarded by c.mu
	waiting *Lease      // the part queued, or nil; guarded by c.mu
	state   lmManyState // guarded by c.mu
}

type lmManyState uint8

const (
	manyTaking lmManyState = iota // taking its keys
	manyHeld                      // granted
	manyEnded                     // released, failed or lost
)

// lmAcquireMany is the reply to an acquire-many request.
type lmAcquireMany struct {
	Type                string            `json:"type"`
	UUID                string            `json:"uuid"`
	Keys                []string          `json:"keys,omitempty"`
	Acquired            bool              `json:"acquired"`
	LockUUID            string            `json:"lockUuid,omitempty"`
	FencingTokens       map[string]uint64 `json:"fencingTokens,omitempty"`
	FencingTokenStrings map[string]string `json:"fencingTokenStrings,omitempty"`
	ContendedKey        string            `json:"contendedKey,omitempty"`
	LockRequestCount    *int              `json:"lockRequestCount,omitempty"`
	Error               string            `json:"error,omitempty"`
}

func (c *lmConn) acquireMany(r *lmRequest) {
	b := c.s.b
	id := r.UUID
	rep := lmAcquireMany{Type: "acquire-many", UUID: id}
	refuse := func(msg string) {
		rep.Error = msg
		c.reply(&rep)
	}
	if id == "" {
		refuse("acquire-many request without a uuid")
		return
	}
	var keys []string
	if err := json.Unmarshal(r.Keys, &keys); err != nil || len(keys) == 0 {
		refuse(fmt.Sprintf("`keys` must be an array of 1 to %d strings", lmMaxManyKeys))
		return
	}
	keys = canonicalKeys(keys)
	rep.Keys = keys
	if len(keys) > lmMaxManyKeys {
		refuse(fmt.Sprintf("acquire-many takes at most %d keys, got %d", lmMaxManyKeys, len(keys)))
		return
	}
	for _, k := range keys {
		if err := b.check(k); err != nil {
			refuse(err.Error())
			return
		}
	}
	ttl, err := lmTTL(r.TTL)
	if err != nil {
		refuse(err.Error())
		return
	}
	m := &lmMany{c: c, id: id, keys: keys, wait: r.Wait == nil || *r.Wait, req: defaultRequest()}
	m.req.owner, m.req.ttl = lmOwnerPrefix+id, ttl
	m.req.keepOnDisconnect = r.KeepLocksAfterDeath && ttl > 0
	if err := m.req.validate(); err != nil {
		refuse(err.Error())
		return
	}

	c.mu.Lock()
	old := c.manys[id]
	n := len(c.waits) + c.manyWaiting
	switch {
	case c.over:
		c.mu.Unlock()
		return
	case old != nil && old.state == manyHeld: // a retry whose grant crossed it
		rep = old.grantLocked()
	case old != nil: // a retry of a request taking its keys: taken once
		rep.Keys, rep.LockRequestCount = old.keys, new(int)
		rep.ContendedKey = old.keys[min(len(old.parts), len(old.keys)-1)]
	case n >= b.cfg.maxWaitersPerSess:
		rep.Error = fmt.Sprintf("%d requests of this connection wait already", n)
	default:
		c.manys[id] = m
		c.manyWaiting++
		c.mu.Unlock()
		m.take()
		return
	}
	c.mu.Unlock()
	c.reply(&rep)
}

// take takes m's keys from the first it lacks, until one must wait or all
// are held. It runs on the reader, and, after a queued key's grant, on a
// goroutine of its own: no table call is made under the table's lock.
func (m *lmMany) take() {
	c := m.c
	for {
		c.mu.Lock()
		if m.state != manyTaking {
			c.mu.Unlock()
			return
		}
		if len(m.parts) == len(m.keys) {
			m.state = manyHeld
			c.manyWaiting--
			rep := m.grantLocked()
			c.push(&rep)
			c.mu.Unlock()
			return
		}
		key := m.keys[len(m.parts)]
		c.mu.Unlock()
		l, queued, err := c.begin(key, m.req, false, m.wait, m)
		if err != nil {
			m.fail(key, err)
			return
		}
		c.mu.Lock()
		// A queued l may have been granted and taken on by another take,
		// which may even have finished: once the hooks have recorded l, it
		// is m's, whatever m's state.
		mine := l == m.waiting || slices.Contains(m.parts, l)
		switch {
		case m.state != manyTaking && !mine: // ended meanwhile: l is not m's to keep
			c.mu.Unlock()
			c.drop(nil, l)
			return
		case queued: // granted carries on, or has
			c.mu.Unlock()
			return
		}
		m.parts = append(m.parts, l)
		c.mu.Unlock()
	}
}

// answer returns the start of every reply to m.
func (m *lmMany) answer() lmAcquireMany {
	return lmAcquireMany{Type: "acquire-many", UUID: m.id, Keys: m.keys}
}

// grantLocked returns m's grant.
func (m *lmMany) grantLocked() lmAcquireMany {
	rep := m.answer()
	rep.Acquired, rep.LockUUID = true, m.id
	rep.FencingTokens = make(map[string]uint64, len(m.parts))
	rep.FencingTokenStrings = make(map[string]string, len(m.parts))
	for _, p := range m.parts {
		rep.FencingTokens[p.key] = p.token
		rep.FencingTokenStrings[p.key] = strconv.FormatUint(p.token, 10)
	}
	return rep
}

// fail gives back the keys m took and answers that key could not be had:
// held (ErrLocked, with wait false), or err.
func (m *lmMany) fail(key string, err error) {
	c := m.c
	c.mu.Lock()
	if m.state != manyTaking {
		c.mu.Unlock()
		return
	}
	parts, waiting := m.endLocked()
	c.mu.Unlock()
	c.drop(parts, waiting)
	rep := m.answer()
	if errors.Is(err, ErrLocked) {
		n := 0
		if ki, ierr := c.s.b.Inspect(context.Background(), key); ierr == nil {
			n = len(ki.Waiters)
		}
		rep.ContendedKey, rep.LockRequestCount = key, &n
	} else {
		rep.Error = err.Error()
	}
	c.push(&rep)
}

// endLocked ends m and returns the leases it had, to release outside c.mu.
func (m *lmMany) endLocked() (parts []*Lease, waiting *Lease) {
	c := m.c
	if m.state == manyTaking {
		c.manyWaiting--
	}
	m.state = manyEnded
	delete(c.manys, m.id)
	parts, waiting = m.parts, m.waiting
	m.parts, m.waiting = nil, nil
	return parts, waiting
}

// drop releases parts and takes waiting out of its queue, or releases it if
// its grant won the race. Leases already ended are passed over.
func (c *lmConn) drop(parts []*Lease, waiting *Lease) {
	if waiting != nil && !c.s.b.shardFor(waiting.key).dequeue(waiting) {
		parts = append(parts, waiting)
	}
	for _, p := range parts {
		p.Unlock(context.Background())
	}
}

// queued implements leaseHook: like a lock, a queued acquire-many is
// answered at once with acquired:false, naming the key it waits for.
func (m *lmMany) queued(l *Lease, _ uint32) {
	c := m.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if m.state != manyTaking {
		return // take drops l
	}
	m.waiting = l
	n := l.e.waiters.n
	rep := m.answer()
	rep.ContendedKey, rep.LockRequestCount = l.key, &n
	c.push(&rep)
}

// granted implements leaseHook. A key granted at once is take's to record;
// the queued one is recorded here, and the keys after it are taken on a
// goroutine, off the table's lock.
func (m *lmMany) granted(l *Lease, _ uint32) {
	c := m.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if m.waiting != l {
		return
	}
	m.waiting = nil
	m.parts = append(m.parts, l)
	c.s.b.srv.start(m.take) // fails only when the broker closes, and with it m
}

// revoked implements leaseHook: live-mutex has no preemption to tell of.
func (m *lmMany) revoked(*Lease) {}

// ended implements leaseHook. A part that ends without release-many
// (expiry, force unlock, unlock of its key by lockUuid) ends m, as a part
// ends a LockAll lease: its other keys are released. A lock granted is
// recorded as lost, so that its release-many succeeds, as a late unlock
// does; a request still taking its keys fails.
func (m *lmMany) ended(l *Lease, reason error) {
	c := m.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.over || m.state == manyEnded {
		return
	}
	held := m.state == manyHeld
	parts, waiting := m.endLocked()
	if held {
		if len(c.goneMany) >= maxGone {
			clear(c.goneMany)
		}
		c.goneMany[m.id] = m.keys
	}
	c.s.b.srv.start(func() {
		c.drop(parts, waiting)
		if !held {
			rep := m.answer()
			rep.Error = fmt.Sprintf("key %q was lost before all keys were held: %v", l.key, reason)
			c.push(&rep)
		}
	})
}

// lmReleaseMany is the reply to a release-many request.
type lmReleaseMany struct {
	Type     string   `json:"type"`
	UUID     string   `json:"uuid"`
	LockUUID string   `json:"lockUuid,omitempty"`
	Keys     []string `json:"keys,omitempty"`
	Released bool     `json:"released"`
	Error    string   `json:"error,omitempty"`
}

// releaseMany releases an acquire-many lock of this connection by its
// lockUuid, or withdraws one still taking its keys. The reply goes before
// the hand-offs' grants.
func (c *lmConn) releaseMany(r *lmRequest) {
	id := r.LockUUID
	c.mu.Lock()
	m := c.manys[id]
	keys, lost := c.goneMany[id]
	var parts []*Lease
	var waiting *Lease
	switch {
	case m != nil:
		keys = m.keys
		parts, waiting = m.endLocked()
	case lost:
		delete(c.goneMany, id)
	}
	c.mu.Unlock()
	if m == nil && !lost {
		c.reply(&lmReleaseMany{Type: "release-many", UUID: r.UUID,
			Error: fmt.Sprintf("no acquire-many lock with lockUuid %q on this connection", id)})
		return
	}
	c.reply(&lmReleaseMany{Type: "release-many", UUID: r.UUID, LockUUID: id, Keys: keys, Released: true})
	c.drop(parts, waiting)
}
