package lmx

// leaseList is an intrusive doubly linked list of leases through their prev
// and next fields: a key's holders in grant order, or its waiters in queue
// order. A lease is in at most one list. The caller holds the shard's mu.
type leaseList struct {
	head, tail *Lease
	n          int
}

// pushBack appends l.
func (q *leaseList) pushBack(l *Lease) {
	l.prev, l.next = q.tail, nil
	if q.tail == nil {
		q.head = l
	} else {
		q.tail.next = l
	}
	q.tail = l
	q.n++
}

// insert puts l behind every lease of its priority or higher, behind any
// that has been overtaken maxBypass times, and behind every named one (see
// chain.go): the queue is ordered by priority, then arrival, with that bound
// against starvation. It walks from the tail, so a queue of equal
// priorities costs O(1).
func (q *leaseList) insert(l *Lease) {
	at := q.tail
	for at != nil && at.prio() < l.prio() && !at.bypassedMax() && !at.isNamed() {
		at = at.prev
	}
	if at == q.tail {
		q.pushBack(l)
		return
	}
	q.after(at, l)
	q.overtaken(l.next)
}

// requeue puts back the waiter l, which queued before every waiter now in
// q, behind those of higher priority at the head: they overtook it, and
// each counts as a bypass, up to maxBypass.
func (q *leaseList) requeue(l *Lease) {
	at := q.head
	for at != nil && at.prio() > l.prio() && !l.bypassedMax() {
		l.extra().bypassed++
		at = at.next
	}
	if at == nil {
		q.pushBack(l)
	} else {
		q.after(at.prev, l)
	}
}

// after links l in right after at, which is not the tail (at == nil: at the
// head).
func (q *leaseList) after(at, l *Lease) {
	var next *Lease
	if at == nil {
		next = q.head
		q.head = l
	} else {
		next = at.next
		at.next = l
	}
	l.prev, l.next = at, next
	next.prev = l
	q.n++
}

// mayOvertake reports whether l may be granted ahead of every waiter.
func (q *leaseList) mayOvertake(l *Lease) bool {
	h := q.head
	return h == nil || h.prio() < l.prio() && !h.bypassedMax() && !h.isNamed()
}

// overtaken counts one bypass for from and every waiter behind it.
func (q *leaseList) overtaken(from *Lease) {
	for w := from; w != nil; w = w.next {
		w.extra().bypassed++
	}
}

// bypassedMax reports whether the waiter l may not be overtaken again.
func (l *Lease) bypassedMax() bool { return l.x != nil && l.x.bypassed >= maxBypass }

// remove unlinks l, which must be in q.
func (q *leaseList) remove(l *Lease) {
	if l.prev == nil {
		q.head = l.next
	} else {
		l.prev.next = l.next
	}
	if l.next == nil {
		q.tail = l.prev
	} else {
		l.next.prev = l.prev
	}
	l.prev, l.next = nil, nil
	q.n--
}
