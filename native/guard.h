/*
** guard.h -- turn a SIGBUS from the mapping into an error (guard.c).
**
** A page of a MAP_SHARED mapping whose file was cut short by another process
** (or whose storage failed) raises SIGBUS on access.  Every public call of
** the core that touches mapped memory runs its body under GUARDED: the body
** runs normally; if it faults, the signal handler jumps back to the guard,
** which releases the operation lock the body held (op_enter), marks a write
** transaction unusable (its pages may be half-changed), and returns
** KVM_IO with a message.  The jump skips the body's own clean-up, so bodies
** must not hold heap allocations or other locks across mapped access -- the
** core's bodies allocate only dirty pages, which the transaction owns.
**
** sigsetjmp(buf, 0) saves no signal mask (no system call: a few ns), so the
** handler is installed with SA_NODEFER to leave SIGBUS unblocked after the
** jump.  A SIGBUS outside any guard goes to whatever handler was there
** before (faulthandler's, or the default: the process dies as without us).
*/
#ifndef KVM_GUARD_H
#define KVM_GUARD_H

#include <setjmp.h>
#include <stdint.h>

struct kvm_env;
struct kvm_txn;

typedef struct guard_frame {
    sigjmp_buf          *jump;
    struct guard_frame  *prev;      /* guards nest (a public call inside another) */
    struct kvm_env      *env;
    struct kvm_txn      *txn;       /* NULL: a read outside a transaction */
    int                  op_held;   /* op_enter() depth of this frame's env, at entry */
} guard_frame;

int  guard_install(void);           /* idempotent; before the first mapping */
/* 0, or the error of a broken write transaction (then nothing is pushed). */
int  guard_push(guard_frame *f, sigjmp_buf *jump, struct kvm_env *e, struct kvm_txn *t);
void guard_pop(guard_frame *f);
int  guard_fault(guard_frame *f);   /* after the jump: clean up, return the error */

/* result = call, with a SIGBUS during call turned into result = KVM_IO;
** t (may be NULL) is the transaction the call works in. */
#define GUARDED(e, t, result, call)                                          \
    do {                                                                     \
        sigjmp_buf guard_jump_;                                              \
        guard_frame guard_frame_;                                            \
        if (sigsetjmp(guard_jump_, 0) == 0) {                                \
            if ((result = guard_push(&guard_frame_, &guard_jump_, (e), (t))) == 0) { \
                result = (call);                                             \
                guard_pop(&guard_frame_);                                    \
            }                                                                \
        } else                                                               \
            result = guard_fault(&guard_frame_);                             \
    } while (0)

#endif
