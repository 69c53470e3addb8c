// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "swift-long-attention",
    products: [
        .library(name: "LongAttention", targets: ["LongAttention"]),
        .library(name: "AttentionTensor", targets: ["AttentionTensor"]),
        // The language-model layer (Llama/Mixtral decoders, checkpoints, training, LoRA, generation),
        // the mixture-of-experts layer on its own, and the needle-in-a-haystack evaluation.
        .library(name: "LongContextModel", targets: ["LongContextModel"]),
        .library(name: "MixtureOfExperts", targets: ["MixtureOfExperts"]),
        .library(name: "AttentionEvaluation", targets: ["AttentionEvaluation"]),
        .executable(name: "attn", targets: ["attn"]),
        .executable(name: "attention-bench", targets: ["AttentionBench"]),
        // Sequence-parallel attention over OpenMPI (ring attention, sharded decoding, linear
        // attention by prefix scan): a separate product, so LongAttention does not depend on MPI.
        .library(name: "DistributedAttention", targets: ["DistributedAttention", "SwiftMPI", "SequenceParallel"]),
        // A pretrained model's prefill and decoding across MPI ranks (over DistributedAttention and LongContextModel).
        .library(name: "DistributedModel", targets: ["DistributedModel"]),
        // Hugging Face chat templates (a jinja2 subset), Foundation only.
        .library(name: "ChatTemplate", targets: ["ChatTemplate"]),
        // Tokenizers of GGUF vocabularies and Hugging Face tokenizer.json files (Foundation only).
        .library(name: "Tokenizers", targets: ["Tokenizers"]),
        // The OpenAI-compatible HTTP server (Hummingbird 2): a product of its own, so the library
        // and `attn` never depend on an HTTP stack.
        .executable(name: "attn-server", targets: ["AttnServer"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.0.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
    ],
    targets: [
        // OpenBLAS (CBLAS + LAPACKE) as a system library, found through pkg-config.
        .systemLibrary(
            name: "COpenBLAS",
            path: "Modules/COpenBLAS",
            pkgConfig: "openblas",
            providers: [.apt(["libopenblas-dev", "liblapacke-dev"])]
        ),
        // The vectorised kernels in C, one file per family (elementwise and finite scan, softmax and
        // online softmax, the (max, sum, output) merge, linear-attention features and sums, decode
        // products, Infini's blend and delta rule, RoPE and ALiBi), with runtime CPU dispatch
        // (`target_clones`), so they run AVX-512/AVX2 code without unsafe compiler flags.
        .target(name: "CAttentionKernels"),
        .target(name: "AttentionTensor", dependencies: ["COpenBLAS", "CAttentionKernels"]),
        // OpenMPI's C API (pkg-config ompi-c; Debian's libopenmpi-dev) and the Swift layer over
        // what the distributed attention uses: errors thrown, every wait bounded.
        .systemLibrary(
            name: "CMPI",
            path: "Modules/CMPI",
            pkgConfig: "ompi-c",
            providers: [.apt(["libopenmpi-dev", "openmpi-bin"])]
        ),
        .target(name: "SwiftMPI", dependencies: ["CMPI"]),
        // How a sequence is split across ranks (contiguous, zigzag; striped decode positions): pure
        // index maths, unit-tested without MPI.
        .target(name: "SequenceParallel"),
        .target(name: "ChatTemplate"),
        // Byte-level BPE (llama.cpp's pre-tokenizers) and SentencePiece BPE: depends on nothing else here.
        .target(name: "Tokenizers"),
        // Ring attention (forward, backward), the position-sharded KV cache, distributed linear attention.
        .target(
            name: "DistributedAttention",
            dependencies: ["SwiftMPI", "SequenceParallel", "LongAttention", "AttentionTensor", "CAttentionKernels"]
        ),
        // A pretrained model across ranks (sequence-parallel prefill by the ring and halo
        // exchanges, tensor-parallel decoding on a position-sharded cache): its own target, so that
        // neither LongContextModel nor DistributedAttention depends on the other.
        .target(
            name: "DistributedModel",
            dependencies: ["DistributedAttention", "SwiftMPI", "SequenceParallel", "LongContextModel", "LongAttention", "AttentionTensor"]
        ),
        // `attn dist ...` (run under mpirun): its own target, so AttnCommands stays MPI-free (the
        // model commands share attn lm's options from it).
        .target(
            name: "DistCommands",
            dependencies: [
                "DistributedAttention", "DistributedModel", "SwiftMPI", "SequenceParallel", "LongAttention", "AttentionTensor",
                "LongContextModel", "AttnCommands", .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // The attention variants, a folder per family: Common (the shared scaffold), Exact, BigBird,
        // Linear, Infini, Positions, Decode.
        .target(name: "LongAttention", dependencies: ["AttentionTensor", "COpenBLAS", "CAttentionKernels"]),
        // Applications of the engine that are not part of it: the needle-in-a-haystack evaluation.
        .target(name: "AttentionEvaluation", dependencies: ["LongAttention", "AttentionTensor"]),
        // The mixture-of-experts layer (router, top-k, experts grouped by a counting sort, one GEMM
        // chain per expert; forward and backward), on raw pointers and on Tensors.
        .target(name: "MixtureOfExperts", dependencies: ["AttentionTensor", "COpenBLAS", "CAttentionKernels"]),
        // The language-model layer: a Llama/Mixtral decoder on the attention variants, its
        // checkpoints in Hugging Face's format, training, LoRA, generation, the byte-level corpus.
        .target(
            name: "LongContextModel",
            dependencies: ["LongAttention", "AttentionTensor", "CAttentionKernels", "MixtureOfExperts", "Tokenizers", "ChatTemplate"]
        ),
        // The `attn` command line: its commands in a library (tests and the argument fuzzer use
        // them), and a thin executable.
        .target(
            name: "AttnCommands",
            dependencies: [
                "LongAttention", "AttentionTensor", "AttentionEvaluation", "MixtureOfExperts", "LongContextModel", "ChatTemplate",
                "Tokenizers", .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "attn",
            dependencies: ["AttnCommands", "DistCommands", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        // The server's request handling, scheduler and metrics (a library so tests can reach them),
        // and the `attn-server` executable over it.
        .target(
            name: "AttnServerCore",
            dependencies: [
                "LongContextModel", "LongAttention", "AttentionTensor", "ChatTemplate",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .executableTarget(
            name: "AttnServer",
            dependencies: ["AttnServerCore", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        // libFuzzer entry points (`make fuzz` builds them with -sanitize=fuzzer); built normally they
        // replay the files given on the command line.
        .target(name: "FuzzSupport", path: "Fuzz/FuzzSupport"),
        .executableTarget(name: "NpyFuzzer", dependencies: ["AttentionTensor", "FuzzSupport"], path: "Fuzz/NpyFuzzer"),
        .executableTarget(name: "SafeTensorsFuzzer", dependencies: ["AttentionTensor", "FuzzSupport"], path: "Fuzz/SafeTensorsFuzzer"),
        .executableTarget(name: "GGUFFuzzer", dependencies: ["AttentionTensor", "FuzzSupport"], path: "Fuzz/GGUFFuzzer"),
        .executableTarget(name: "ArgsFuzzer", dependencies: ["AttnCommands", "FuzzSupport"], path: "Fuzz/ArgsFuzzer"),
        // Fits and charts of the benchmark report (a library so that tests can reach them).
        .target(name: "BenchmarkSupport", path: "Benchmarks/BenchmarkSupport"),
        .executableTarget(
            name: "AttentionBench",
            dependencies: [
                "LongAttention", "AttentionTensor", "COpenBLAS", "CAttentionKernels", "BenchmarkSupport", "MixtureOfExperts",
                "LongContextModel",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Benchmarks/AttentionBench"
        ),
        .testTarget(name: "AttentionTensorTests", dependencies: ["AttentionTensor", "CAttentionKernels"], resources: [.copy("Fixtures")]),
        .testTarget(name: "LongAttentionTests", dependencies: ["LongAttention", "AttentionTensor", "AttentionEvaluation"]),
        .testTarget(name: "BenchmarkSupportTests", dependencies: ["BenchmarkSupport"]),
        .testTarget(name: "SequenceParallelTests", dependencies: ["SequenceParallel"]),
        // The MPI layer, ring attention, the sharded KV cache, distributed linear attention and the
        // distributed model on a one-rank world (MPI_COMM_WORLD of the test process, no mpirun);
        // `make test-dist` runs the same code on 2, 3 and 4 ranks.
        .testTarget(
            name: "DistributedAttentionTests",
            dependencies: ["DistributedAttention", "DistributedModel", "SwiftMPI", "SequenceParallel", "LongAttention",
                           "AttentionTensor", "LongContextModel"]
        ),
        .testTarget(name: "ChatTemplateTests", dependencies: ["ChatTemplate"], resources: [.copy("Fixtures")]),
        .testTarget(name: "TokenizersTests", dependencies: ["Tokenizers"], exclude: ["Fixtures"]),
        .testTarget(name: "AttnCommandsTests", dependencies: ["AttnCommands", "AttentionTensor"]),
        .testTarget(name: "LongContextModelTests", dependencies: ["LongContextModel", "LongAttention", "AttentionTensor", "ChatTemplate"]),
        // Drives the `attn-server` binary over loopback HTTP (skipped when SmolLM2 is absent).
        .testTarget(name: "AttnServerTests", dependencies: ["AttnServerCore"]),
        .testTarget(
            name: "MixtureOfExpertsTests",
            dependencies: ["MixtureOfExperts", "AttentionTensor", "AttnCommands",
                           .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
    ],
    swiftLanguageModes: [.v6]
)
