/* sqcc micro harness: startup, semihosting I/O, instruction count. No heap, no stdio. */
#include <stdint.h>
#include <string.h>
#include "model.h"

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _sstack, _estack;
int main(void);

/* ---- ARM semihosting (bkpt 0xAB) ---- */
static int sh_call(int op, void* arg) {
  register int r0 __asm__("r0") = op;
  register void* r1 __asm__("r1") = arg;
  __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
  return r0;
}
static void sh_puts(const char* s) { sh_call(0x04, (void*)s); }
static void sh_exit(int code) {
  sh_call(0x18, (void*)(uintptr_t)(code == 0 ? 0x20026 : 0x20023));
  for (;;) {}
}
static int sh_open(const char* name, int mode) {
  uint32_t a[3] = {(uint32_t)(uintptr_t)name, (uint32_t)mode, (uint32_t)strlen(name)};
  return sh_call(0x01, a);
}
static int sh_read(int fh, void* buf, uint32_t n) {  /* returns bytes NOT read */
  uint32_t a[3] = {(uint32_t)fh, (uint32_t)(uintptr_t)buf, n};
  return sh_call(0x06, a);
}
static int sh_write(int fh, const void* buf, uint32_t n) {
  uint32_t a[3] = {(uint32_t)fh, (uint32_t)(uintptr_t)buf, n};
  return sh_call(0x05, a);
}
static void sh_close(int fh) { uint32_t a[1] = {(uint32_t)fh}; sh_call(0x02, a); }
static void put_u64(const char* key, uint64_t v) {
  char buf[64]; char tmp[24]; int n = 0, k = 0;
  while (key[k] && n < 36) buf[n++] = key[k++];
  buf[n++] = '=';
  k = 0; do { tmp[k++] = (char)('0' + v % 10); v /= 10; } while (v);
  while (k) buf[n++] = tmp[--k];
  buf[n++] = '\n'; buf[n] = 0;
  sh_puts(buf);
}

/* ---- SysTick: 24-bit down counter at the processor clock, overflows counted ---- */
#define SYST_CSR (*(volatile uint32_t*)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t*)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t*)0xE000E018u)
static volatile uint32_t systick_wraps;
void SysTick_Handler(void) { systick_wraps++; }
#define SCB_ICSR (*(volatile uint32_t*)0xE000ED04u)
#define SYST_RELOAD 0xFFFFFFu
static void ticks_start(void) {
  SYST_CSR = 0; SYST_RVR = SYST_RELOAD; SYST_CVR = 0; systick_wraps = 0;
  SYST_CSR = 7u; /* enable, interrupt, processor clock */
  while (SYST_CVR == 0) {}  /* first reload */
}
/* Ticks since the first reload. The wrap at 1->0 is counted by the handler or is still pending
   (interrupts are masked while reading), so the two are combined consistently. */
static uint64_t ticks_now(void) {
  uint32_t w, v, pend;
  __asm__ volatile("cpsid i" ::: "memory");
  v = SYST_CVR;
  pend = (SCB_ICSR >> 26) & 1u;
  w = systick_wraps;
  if (pend) v = SYST_CVR;
  __asm__ volatile("cpsie i" ::: "memory");
  w += pend;
  if (v == 0) return (uint64_t)w * (SYST_RELOAD + 1u) - 1u;
  return (uint64_t)w * (SYST_RELOAD + 1u) + (SYST_RELOAD - v);
}
static void ticks_stop(void) { SYST_CSR = 0; }

/* ---- vector table and reset ---- */
void Default_Handler(void) { sh_puts("sqcc: fault\n"); sh_exit(1); }
void Reset_Handler(void);
__attribute__((section(".vectors"), used)) void (*const sqcc_vectors[16])(void) = {
  (void (*)(void))(&_estack), Reset_Handler, Default_Handler, Default_Handler, Default_Handler,
  Default_Handler, Default_Handler, 0, 0, 0, 0, Default_Handler, Default_Handler, 0,
  Default_Handler, SysTick_Handler,
};

__attribute__((noinline)) static void paint_stack(void) {
  uint32_t* p = &_sstack;
  uint32_t* sp = (uint32_t*)__builtin_frame_address(0) - 64;
  while (p < sp) *p++ = 0xDEADBEEFu;
}
static uint32_t stack_used(void) {
  uint32_t* p = &_sstack;
  while (p < &_estack && *p == 0xDEADBEEFu) p++;
  return (uint32_t)((uintptr_t)&_estack - (uintptr_t)p);
}

void Reset_Handler(void) {
  /* FPU (and MVE) on before any compiled code may use it */
  *(volatile uint32_t*)0xE000ED88u |= (0xFu << 20);
  __asm__ volatile("dsb\n isb" ::: "memory");
  uint32_t* src = &_sidata; uint32_t* dst = &_sdata;
  while (dst < &_edata) *dst++ = *src++;
  for (dst = &_sbss; dst < &_ebss; ) *dst++ = 0;
  paint_stack();
  sh_exit(main());
}

__attribute__((noinline)) static void calib_loop(uint32_t n) {
  __asm__ volatile("1: subs %0, %0, #1\n bne 1b" : "+r"(n) :: "cc");
}

static char cmdline[512];
int main(void) {
  char* argv[4] = {0, 0, 0, 0}; int argc = 0;
  uint32_t a[2] = {(uint32_t)(uintptr_t)cmdline, sizeof(cmdline) - 1};
  if (sh_call(0x15, a) == 0) {
    char* p = cmdline;
    while (*p && argc < 4) {
      while (*p == ' ') *p++ = 0;
      if (!*p) break;
      argv[argc++] = p;
      while (*p && *p != ' ') p++;
    }
  }
  if (argc > 1) {  /* argv[1]: raw input bytes, all inputs concatenated */
    int fh = sh_open(argv[1], 1);
    if (fh < 0) { sh_puts("sqcc: cannot open input file\n"); return 3; }
    for (int i = 0; i < SQCC_NUM_INPUTS; i++)
      if (sh_read(fh, sqcc_input_ptr[i], sqcc_input_bytes[i]) != 0) {
        sh_puts("sqcc: input file too short\n"); return 3;
      }
    sh_close(fh);
  } else {
    for (int i = 0; i < SQCC_NUM_INPUTS; i++) memset(sqcc_input_ptr[i], 0, sqcc_input_bytes[i]);
  }
  ticks_start();
  uint64_t c0 = ticks_now();
  calib_loop(CALIB_ITERS);
  uint64_t c1 = ticks_now();
  int rc = sqcc_model_run();
  uint64_t c2 = ticks_now();
  ticks_stop();
  if (rc != 0) { put_u64("sqcc_error_step", (uint64_t)rc); return 4; }
  put_u64("sqcc_calib_insns", 2ull * CALIB_ITERS);
  put_u64("sqcc_calib_ticks", c1 - c0);
  put_u64("sqcc_run_ticks", c2 - c1);
  put_u64("sqcc_stack_used", stack_used());
  if (argc > 2) {
    int fh = sh_open(argv[2], 5);
    if (fh < 0) { sh_puts("sqcc: cannot open output file\n"); return 5; }
    for (int i = 0; i < SQCC_NUM_OUTPUTS; i++)
      if (sh_write(fh, sqcc_output_ptr[i], sqcc_output_bytes[i]) != 0) return 5;
    sh_close(fh);
  }
  sh_puts("sqcc_done\n");
  return 0;
}
