/*
** guard.c -- the SIGBUS guard around mapped access (design: guard.h).
**
** One process-wide handler, installed before the first mapping is made.  The
** current guard of each thread is a thread-local pointer to a frame on that
** thread's stack; the handler jumps to it.  Signals arrive on the faulting
** thread, so a thread only ever jumps to its own frames.
*/
#define _GNU_SOURCE
#include "guard.h"
#include "internal.h"
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>

__thread int kvm_op_depth;                  /* op_enter() calls not yet left */
static __thread guard_frame *guard_top;
static struct sigaction bus_prev;
static pthread_once_t bus_once = PTHREAD_ONCE_INIT;
static int bus_installed;

static void on_sigbus(int sig, siginfo_t *si, void *ctx)
{
    guard_frame *f = guard_top;
    if (f)
        siglongjmp(*f->jump, 1);
    /* Not ours: hand it to the handler that was there before us. */
    if ((bus_prev.sa_flags & SA_SIGINFO) && bus_prev.sa_sigaction) {
        bus_prev.sa_sigaction(sig, si, ctx);
        return;
    }
    if (!(bus_prev.sa_flags & SA_SIGINFO) && bus_prev.sa_handler != SIG_DFL &&
        bus_prev.sa_handler != SIG_IGN) {
        bus_prev.sa_handler(sig);
        return;
    }
    /* Default action: die of SIGBUS as if we had never been here.  A fault
    ** repeats when we return; a SIGBUS sent with kill() must be raised again. */
    signal(SIGBUS, SIG_DFL);
    if (si->si_code <= 0)
        raise(sig);
}

static void install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    bus_installed = sigaction(SIGBUS, &sa, &bus_prev) == 0;
}

int guard_install(void)
{
    pthread_once(&bus_once, install);
    return bus_installed ? 0 : kvm_err(KVM_IO, "cannot install the SIGBUS handler");
}

int guard_push(guard_frame *f, sigjmp_buf *jump, struct kvm_env *e, struct kvm_txn *t)
{
    if (t && t->broken)
        return kvm_err(KVM_IO, "the transaction was interrupted by a bus error (SIGBUS): abort it");
    f->jump = jump;
    f->env = e;
    f->txn = t;
    f->op_held = kvm_op_depth;
    f->prev = guard_top;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    guard_top = f;
    return 0;
}

void guard_pop(guard_frame *f)
{
    guard_top = f->prev;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

int guard_fault(guard_frame *f)
{
    guard_top = f->prev;
    while (kvm_op_depth > f->op_held)
        op_leave(f->env);
    if (f->txn && f->txn->write)
        f->txn->broken = 1;
    return kvm_err_sys(KVM_IO, EIO, "bus error (SIGBUS) in the database's mapping: the file was "
                                    "truncated by another process, or its storage failed");
}
