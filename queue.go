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

// insert puts l behind every lease of its priority or higher: the queue is
// ordered by priority, then arrival. It walks from the tail, so a queue of
// equal priorities costs O(1).
func (q *leaseList) insert(l *Lease) {
	at := q.tail
	for at != nil && at.prio < l.prio {
		at = at.prev
	}
	if at == q.tail {
		q.pushBack(l)
		return
	}
	// l goes right after at (at == nil: at the head).
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
