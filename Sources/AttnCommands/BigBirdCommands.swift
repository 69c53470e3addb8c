import ArgumentParser
import AttentionTensor
import Foundation
import LongAttention

/// BigBird plan options shared by `run bigbird` and `pattern bigbird`.
struct BigBirdOptions: ParsableArguments {
    @Flag(help: "Causal BigBird: first g blocks as sinks, window up to the diagonal, random blocks from earlier blocks.")
    var causal = false
    @Option(help: "Block size b.")
    var blockSize: Int = 64
    @Option(help: "Global blocks g at each end.")
    var globalBlocks: Int = 1
    @Option(help: "Window w in blocks (odd).")
    var windowBlocks: Int = 3
    @Option(help: "Random blocks r per query block.")
    var randomBlocks: Int = 3
    @Option(help: "Seed of the random blocks.")
    var seed: UInt64 = 0
    @Option(help: "Explicit random plan .npy, int [H, nb-2, r] (Hugging Face's layout, g = 1; causal: [H, nb-1, r] for any g, -1 for unused slots and in the rows of global blocks).")
    var randomPlan: String?

    /// The plan's ranges, refused while parsing (before any file is read).
    func validate() throws {
        if blockSize < 1 { throw ValidationError("--block-size must be at least 1, got \(blockSize)") }
        if windowBlocks < 1 || windowBlocks % 2 == 0 { throw ValidationError("--window-blocks must be odd and at least 1, got \(windowBlocks)") }
        if globalBlocks < 0 { throw ValidationError("--global-blocks must be at least 0, got \(globalBlocks)") }
        if randomBlocks < 0 { throw ValidationError("--random-blocks must be at least 0, got \(randomBlocks)") }
    }

    func plan(sequenceLength: Int, heads: Int, explicitR: Bool) throws -> BigBirdPlan {
        if let path = randomPlan {
            let (shape, values) = try Numpy.readIntegers(path)
            if globalBlocks != 1 && !causal {
                throw ValidationError("--random-plan's non-causal layout has one global block: it needs --global-blocks 1")
            }
            if explicitR, shape.count == 3, shape[2] != randomBlocks {
                throw ValidationError("--random-blocks \(randomBlocks) disagrees with the plan's r = \(shape[2])")
            }
            return try BigBirdPlan(sequenceLength: sequenceLength, heads: heads, blockSize: blockSize, globalBlocks: globalBlocks,
                                   windowBlocks: windowBlocks, randomPlan: values, planShape: shape, causal: causal)
        }
        return try BigBirdPlan(sequenceLength: sequenceLength, heads: heads, blockSize: blockSize,
                               globalBlocks: globalBlocks, windowBlocks: windowBlocks, randomBlocks: randomBlocks,
                               seed: seed, causal: causal)
    }
}

struct RunBigBird: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bigbird",
        abstract: "BigBird block-sparse attention (window + global + random blocks).")
    @OptionGroup var io: IOOptions
    @OptionGroup var bigbird: BigBirdOptions
    @OptionGroup var scaleOption: ScaleOption
    var scale: Float? { scaleOption.scale }

    func run() throws {
        let (q, k, v) = try io.load()
        let plan = try bigbird.plan(sequenceLength: q.shape[2], heads: q.shape[1],
                                    explicitR: CommandLine.arguments.contains("--random-blocks"))
        let out = try bigBirdAttention(queries: q, keys: k, values: v, plan: plan, scale: scale, threads: io.threads)
        try Numpy.write(out, to: io.output)
    }
}

struct Pattern: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Draw or export an attention pattern.", subcommands: [PatternBigBird.self])
}

struct PatternBigBird: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bigbird",
        abstract: "BigBird's block mask: .svg (one panel per head, as in the paper) or .npy (uint8 [H, nb, nb]: 0 none, 1 window, 2 global, 3 random); and the random plan in the --random-plan layout.")
    @Option(help: "Sequence length N.")
    var seqLen: Int
    @Option(help: "Query heads H.")
    var heads: Int = 1
    @OptionGroup var bigbird: BigBirdOptions
    @Option(name: [.customShort("o"), .customLong("output")], help: "The block mask: .svg or .npy.")
    var output: String?
    @Option(help: "Write the plan's random blocks here as int32 .npy: [H, nb-2, r], or [H, nb-1, r] with -1 for unused slots when causal (what --random-plan reads).")
    var randomPlanOut: String?

    func validate() throws {
        if seqLen < 1 || seqLen > 1 << 26 { throw ValidationError("--seq-len must be in 1...\(1 << 26)") }
        if heads < 1 || heads > 64 { throw ValidationError("--heads must be in 1...64") }
        if output == nil && randomPlanOut == nil { throw ValidationError("give -o (block mask) or --random-plan-out (plan), or both") }
        if let output, !(output.hasSuffix(".svg") || output.hasSuffix(".npy")) { throw ValidationError("-o must end in .svg or .npy") }
        if let randomPlanOut, !randomPlanOut.hasSuffix(".npy") { throw ValidationError("--random-plan-out must end in .npy") }
        if bigbird.blockSize >= 1, (seqLen + bigbird.blockSize - 1) / bigbird.blockSize > 4096 {
            throw ValidationError("more than 4096 blocks: use a larger --block-size for a picture")
        }
    }

    func run() throws {
        let plan = try bigbird.plan(sequenceLength: seqLen, heads: heads,
                                    explicitR: CommandLine.arguments.contains("--random-blocks"))
        if let randomPlanOut {
            let (shape, values) = try plan.explicitRandomPlan()
            try Numpy.write(int32: values.map { Int32($0) }, shape: shape, to: randomPlanOut)
        }
        guard let output else { return }
        if output.hasSuffix(".npy") {
            try Numpy.write(uint8: plan.blockMask(), shape: [heads, plan.blockCount, plan.blockCount], to: output)
        } else {
            let svg = bigBirdSVG(plan)
            let tmp = output + ".partial"
            try svg.write(toFile: tmp, atomically: false, encoding: .utf8)
            guard rename(tmp, output) == 0 else { throw ValidationError("cannot write \(output)") }
        }
    }
}

/// The block mask drawn like the BigBird paper's figure: a grid per head, query blocks down,
/// key blocks across; window, global and random blocks in distinct colours.
func bigBirdSVG(_ plan: BigBirdPlan) -> String {
    let nb = plan.blockCount
    let panel = 360.0, gap = 30.0, top = 60.0, left = 20.0
    let cell = panel / Double(nb)
    let cols = min(plan.heads, 4), rowsOfPanels = (plan.heads + cols - 1) / cols
    let width = left * 2 + Double(cols) * panel + Double(cols - 1) * gap
    let height = top + Double(rowsOfPanels) * (panel + gap + 20) + 30
    let colours: [BigBirdPlan.BlockKind: String] = [.window: "#4c72b0", .global: "#dd8452", .random: "#55a868"]
    var s = """
    <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" font-family="sans-serif" font-size="13">
    <rect width="100%" height="100%" fill="white"/>
    <text x="\(left)" y="22" font-size="15">BigBird block mask: N = \(plan.sequenceLength), b = \(plan.blockSize), nb = \(nb), g = \(plan.globalBlocks), w = \(plan.windowBlocks), r = \(plan.randomBlocks)\(plan.causal ? ", causal" : "")</text>
    <g transform="translate(\(left), 34)">
    """
    for (i, (kind, name)) in [(BigBirdPlan.BlockKind.window, "window"), (.global, "global"), (.random, "random")].enumerated() {
        s += "<rect x=\(q(Double(i) * 110)) y=\"0\" width=\"14\" height=\"14\" fill=\"\(colours[kind]!)\"/>"
        s += "<text x=\(q(Double(i) * 110 + 20)) y=\"12\">\(name)</text>\n"
    }
    s += "</g>\n"
    for h in 0..<plan.heads {
        let x0 = left + Double(h % cols) * (panel + gap), y0 = top + Double(h / cols) * (panel + gap + 20) + 20
        s += "<text x=\(q(x0)) y=\(q(y0 - 6))>head \(h)</text>\n"
        s += "<rect x=\(q(x0)) y=\(q(y0)) width=\(q(panel)) height=\(q(panel)) fill=\"#f4f4f4\" stroke=\"#999\"/>\n"
        for i in 0..<nb {
            // Merge runs of equal kind into one rectangle per row.
            var j = 0
            while j < nb {
                let kind = plan.kind(head: h, queryBlock: i, keyBlock: j)
                var end = j + 1
                while end < nb && plan.kind(head: h, queryBlock: i, keyBlock: end) == kind { end += 1 }
                if let colour = colours[kind] {
                    s += "<rect x=\(q(x0 + Double(j) * cell)) y=\(q(y0 + Double(i) * cell)) width=\(q(Double(end - j) * cell)) height=\(q(cell)) fill=\"\(colour)\"/>\n"
                }
                j = end
            }
        }
        if nb <= 64 {   // grid lines where they stay readable
            for t in 0...nb {
                let p = Double(t) * cell
                s += "<line x1=\(q(x0 + p)) y1=\(q(y0)) x2=\(q(x0 + p)) y2=\(q(y0 + panel)) stroke=\"white\" stroke-width=\"0.5\"/>"
                s += "<line x1=\(q(x0)) y1=\(q(y0 + p)) x2=\(q(x0 + panel)) y2=\(q(y0 + p)) stroke=\"white\" stroke-width=\"0.5\"/>\n"
            }
        }
    }
    s += "<text x=\(q(left)) y=\(q(height - 10)) fill=\"#555\">rows: query blocks (top to bottom); columns: key blocks (left to right)</text>\n"
    return s + "</svg>\n"
}

/// A quoted SVG number.
private func q(_ x: Double) -> String { "\"" + String(format: "%.2f", x) + "\"" }
