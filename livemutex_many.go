package lmx

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// live-mutex's multi-key locks (acquire-many and release-many, from its
// Broker1), served on the table as LockAll is: see LIVEMUTEX.md.

// lmMaxManyKeys is the most keys one acquire-many takes, as in live-mutex.
const lmMaxManyKeys = 64

// An lmMany is one acquire-many request and, once granted, its lock. It
// takes its keys through takeAll, the rules LockAll keeps: one at a time in
// canonical order, so that requests whose keys overlap never deadlock, each
// key queued FIFO with every other request for it, all or nothing, and a
// key lost ends the whole. It takes them on a goroutine of its own, which
// waits for a queued key's grant; the client hears of the grant only once
// it holds them all. It is the leaseHook of its keys' leases, its parts.
type lmMany struct {
	lmNoChain
	c      *lmConn
	id     string   // the request's uuid, and the lock's lockUuid
	keys   []string // canonical order
	req    request
	wait   bool
	cancel context.CancelFunc // withdraws the request while it takes its keys
	ready  chan struct{}      // the queued part is granted; buffered

	state     lmManyState // guarded by c.mu
	taken     int         // keys held while taking; guarded by c.mu
	waiting   *Lease      // the part queued, or nil; guarded by c.mu
	lease     *Lease      // the lock, once held; guarded by c.mu
	contended string      // the key a request that does not wait failed on; take's
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
	b := c.b
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
	m := &lmMany{c: c, id: id, keys: keys, wait: r.Wait == nil || *r.Wait, req: defaultRequest(), ready: make(chan struct{}, 1)}
	m.req.owner, m.req.ttl, m.req.ownLimit = lmOwnerPrefix+id, ttl, true
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
		rep.ContendedKey = old.keys[min(old.taken, len(old.keys)-1)]
	case n >= b.cfg.maxWaitersPerSess:
		rep.Error = fmt.Sprintf("%d requests of this connection wait already", n)
	default:
		var ctx context.Context
		ctx, m.cancel = context.WithCancel(context.Background())
		c.manys[id] = m
		c.manyWaiting++
		c.mu.Unlock()
		if !b.srv.g.start(func() { m.run(ctx) }) {
			m.cancel() // the broker is closing, and with it the connection
		}
		return
	}
	c.mu.Unlock()
	c.reply(&rep)
}

// run takes m's keys and answers with the grant, or why it failed.
func (m *lmMany) run(ctx context.Context) {
	c := m.c
	l, err := takeAll(ctx, m.keys, m.take, c.b.start)
	c.mu.Lock()
	if m.state != manyTaking { // withdrawn: by release-many or the connection's end
		c.mu.Unlock()
		if l != nil {
			l.Unlock(context.Background())
		}
		return
	}
	if err != nil {
		m.endLocked()
		c.mu.Unlock()
		rep := m.answer()
		if errors.Is(err, ErrLocked) {
			n := 0
			if ki, ierr := c.b.Inspect(context.Background(), m.contended); ierr == nil {
				n = len(ki.Waiters)
			}
			rep.ContendedKey, rep.LockRequestCount = m.contended, &n
		} else {
			rep.Error = err.Error()
		}
		c.push(&rep)
		return
	}
	m.state, m.lease = manyHeld, l
	c.manyWaiting--
	rep := m.grantLocked()
	c.push(&rep)
	c.mu.Unlock()
}

// take asks the table for key, and waits for it if it queues: the key
// taker of takeAll. The request takes the key's own limit, as a lock
// with max null does.
func (m *lmMany) take(ctx context.Context, key string) (*Lease, error) {
	c := m.c
	l, queued, err := c.b.shardFor(key).begin(key, &m.req, m.wait, m, 0)
	if errors.Is(err, ErrLocked) {
		m.contended = key
	}
	if err != nil {
		return nil, err
	}
	if queued {
		select {
		case <-m.ready:
		case <-l.Done(): // failed by Close
			return nil, l.Err()
		case <-ctx.Done():
			if !c.b.shardFor(key).dequeue(l) {
				l.Unlock(context.Background()) // granted meanwhile
			}
			return nil, ctx.Err()
		}
	}
	c.mu.Lock()
	m.taken++
	c.mu.Unlock()
	return l, nil
}

// answer returns the start of every reply to m.
func (m *lmMany) answer() lmAcquireMany {
	return lmAcquireMany{Type: "acquire-many", UUID: m.id, Keys: m.keys}
}

// grantLocked returns m's grant.
func (m *lmMany) grantLocked() lmAcquireMany {
	rep := m.answer()
	rep.Acquired, rep.LockUUID = true, m.id
	parts := m.lease.Parts()
	rep.FencingTokens = make(map[string]uint64, len(parts))
	rep.FencingTokenStrings = make(map[string]string, len(parts))
	for _, p := range parts {
		rep.FencingTokens[p.key] = p.token
		rep.FencingTokenStrings[p.key] = strconv.FormatUint(p.token, 10)
	}
	return rep
}

// endLocked ends m, and returns its lock if it held one, to release
// outside c.mu; a request still taking its keys is withdrawn, and gives
// them back itself.
func (m *lmMany) endLocked() *Lease {
	c := m.c
	if m.state == manyTaking {
		c.manyWaiting--
		m.cancel()
	}
	m.state = manyEnded
	delete(c.manys, m.id)
	l := m.lease
	m.lease = nil
	return l
}

// queued implements leaseHook: like a lock, a queued acquire-many is
// answered at once with acquired:false, naming the key it waits for.
func (m *lmMany) queued(l *Lease, _ uint32) {
	c := m.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if m.state != manyTaking {
		return // take's ctx is done: it dequeues l
	}
	m.waiting = l
	n := l.waitersLocked()
	rep := m.answer()
	rep.ContendedKey, rep.LockRequestCount = l.key, &n
	c.push(&rep)
}

// granted implements leaseHook: it wakes take for the part it waits for. A
// key granted at once is take's already.
func (m *lmMany) granted(l *Lease, _ uint32) {
	c := m.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if m.waiting == l {
		m.waiting = nil
		m.ready <- struct{}{} // take waits for one part at a time
	}
}

// ended implements leaseHook. A part of a granted lock that ends without
// release-many (expiry, force unlock, unlock of its key by lockUuid) ends
// the lock, which takeAll's watcher releases whole; the lock is recorded
// as lost, so that its release-many succeeds, as a late unlock does. A
// request still taking its keys is failed by takeAll.
func (m *lmMany) ended(*Lease, error) {
	c := m.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.over || m.state != manyHeld {
		return
	}
	m.endLocked()
	if len(c.goneMany) >= maxGone {
		clear(c.goneMany)
	}
	c.goneMany[m.id] = m.keys
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
	var l *Lease
	switch {
	case m != nil:
		keys = m.keys
		l = m.endLocked()
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
	if l != nil {
		l.Unlock(context.Background())
	}
}
