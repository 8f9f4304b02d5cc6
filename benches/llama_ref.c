// The llama.cpp side of `cargo bench --bench llm`: prompt processing and
// generation speed measured the way llama.cpp's llama-bench measures them
// (its `test_prompt` and `test_gen`: random tokens, prompt decoded in
// batches, then one token per decode; warm-up run first), linked against the
// very llama.cpp static libraries the node's `gguf` build uses. llama-bench
// itself is not in the crate's vendored sources, hence this stand-in.
//
// usage: llama_ref MODEL N_PROMPT N_GEN THREADS REPS
// prints: {"pp_tokens_per_second": ..., "tg_tokens_per_second": ...}

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "llama.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void quiet(enum ggml_log_level level, const char * text, void * data) {
    (void) level; (void) text; (void) data;
}

static int prompt(struct llama_context * ctx, int n_vocab, llama_token bos, int n, int n_batch) {
    llama_token * tokens = malloc(sizeof(llama_token) * n_batch);
    for (int done = 0; done < n; done += n_batch) {
        int count = n - done < n_batch ? n - done : n_batch;
        for (int i = 0; i < count; i++) {
            tokens[i] = (done == 0 && i == 0) ? bos : rand() % n_vocab;
        }
        if (llama_decode(ctx, llama_batch_get_one(tokens, count)) != 0) {
            free(tokens);
            return 1;
        }
    }
    llama_synchronize(ctx);
    free(tokens);
    return 0;
}

static int generate(struct llama_context * ctx, int n_vocab, llama_token bos, int n) {
    llama_token token = bos;
    for (int i = 0; i < n; i++) {
        if (llama_decode(ctx, llama_batch_get_one(&token, 1)) != 0) {
            return 1;
        }
        llama_synchronize(ctx);
        token = rand() % n_vocab;
    }
    return 0;
}

int main(int argc, char ** argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s MODEL N_PROMPT N_GEN THREADS REPS\n", argv[0]);
        return 2;
    }
    int n_prompt = atoi(argv[2]), n_gen = atoi(argv[3]), threads = atoi(argv[4]), reps = atoi(argv[5]);
    llama_log_set(quiet, NULL);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    struct llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_prompt + n_gen;
    cp.n_batch = 512;
    cp.n_ubatch = 512;
    cp.n_threads = threads;
    cp.n_threads_batch = threads;
    struct llama_context * ctx = llama_init_from_model(model, cp);
    const struct llama_vocab * vocab = llama_model_get_vocab(model);
    int n_vocab = llama_vocab_n_tokens(vocab);
    llama_token bos = llama_vocab_bos(vocab);
    double pp = 0, tg = 0;
    for (int r = -1; r < reps; r++) {  // r == -1: warm-up
        llama_memory_clear(llama_get_memory(ctx), 1);
        double t0 = now_s();
        if (prompt(ctx, n_vocab, bos, n_prompt, 512)) return 1;
        double t1 = now_s();
        llama_memory_clear(llama_get_memory(ctx), 1);
        double t2 = now_s();
        if (generate(ctx, n_vocab, bos, n_gen)) return 1;
        double t3 = now_s();
        if (r >= 0) {
            pp += n_prompt / (t1 - t0);
            tg += n_gen / (t3 - t2);
        }
    }
    printf("{\"pp_tokens_per_second\": %.3f, \"tg_tokens_per_second\": %.3f}\n", pp / reps, tg / reps);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
