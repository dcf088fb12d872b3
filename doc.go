// Package lmx is a lock broker: named locks shared by goroutines, processes
// and machines, with one API whichever way they are reached.
//
// A [Broker] is a lock table that lives in the caller's process: Lock and
// Unlock on it make no network hop and no system call.
//
//	b := lmx.NewBroker()
//	l, err := b.Lock(ctx, "invoices/42", lmx.TTL(30*time.Second))
//	if err != nil {
//		return err
//	}
//	defer l.Unlock(ctx)
//
// Listen serves the same table to other processes, and Dial returns a
// [Client] with the same methods; Open picks one or the other from a URL.
// Whichever door a caller uses, the table, its queues and its semantics are
// one: the network door runs the very code an in-process call runs. The wire
// protocol is specified in PROTOCOL.md.
//
// # Fairness
//
// Each key has one queue, ordered by priority and then arrival. A waiter
// parks on its own channel; when a holder lets go, the key is handed to the
// waiter at the head of the queue directly, and only that waiter is woken.
// Nothing polls, and nothing barges: a TryLock or a new Lock never overtakes
// a queued waiter it would conflict with. A wait cut short by its context
// leaves the queue and returns the context's error; if the grant raced the
// cancellation, the key is passed on, never left held. Through a [Client],
// such a grant is passed on when it reaches the client, about a round trip
// later; the client's own next Lock of the key waits for that.
//
// # Leases, ids and tokens
//
// A grant is a [Lease]. Its lock id (a ULID) names it for Release from any
// process; a wrong or stale id changes nothing. Its fencing token comes from
// one broker-wide counter, seeded from the wall clock at start, so the
// tokens of a key strictly increase in grant order.
//
// # TTL
//
// A lease asked with [TTL] ends by itself unless released or extended in
// time: its Done channel closes and Err matches [ErrExpired] and
// [ErrLeaseLost], and the key passes to the next waiter. An expired lease is
// never revived. [KeepAlive] renews a TTL lease while its holder lives, up to
// a bound. A TTL costs one runtime timer, not a goroutine.
//
// # Sessions
//
// A Client's connection is a session, kept alive by heartbeats. When it
// ends, the broker releases its leases (unless asked with KeepOnDisconnect
// and a TTL) and drops its waiters; the client reports ErrSessionLost on
// each lease and reconnects, never re-acquiring a lease by itself.
//
// # Concurrency
//
// Broker, Client, Lease and Fence are safe for concurrent use by many
// goroutines.
//
// # What a lock does not do
//
// A lock orders the holders of a key, not memory or I/O: a holder may be
// paused (a GC, a stalled VM, a partition) past its TTL and act after the
// next holder has started. Where that matters, pass the lease's Token to the
// protected resource and let it refuse older tokens; [Fence] does that for a
// resource in Go.
package lmx
