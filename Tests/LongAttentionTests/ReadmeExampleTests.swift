import AttentionTensor
import LongAttention
import XCTest

/// The README's API example, compiled and run as written.
final class ReadmeExampleTests: XCTestCase {
    func testReadmeExample() throws {
        // --- README example begins ---
        let q = try Tensor.randomNormal([1, 8, 1024, 64], seed: 1)   // [B, H, N, d]
        let k = try Tensor.randomNormal([1, 2, 1024, 64], seed: 2)   // [B, Hkv, M, d]: 4 query heads per KV head
        let v = try Tensor.randomNormal([1, 2, 1024, 64], seed: 3)   // [B, Hkv, M, dv]

        let out = try scaledDotProductAttention(queries: q, keys: k, values: v, mask: .causal)
        print(out.shape)                                              // [1, 8, 1024, 64]

        let plan = ExactAttentionPlan(shape: AttentionShape(B: 1, H: 8, Hkv: 2, N: 1024, M: 1024, d: 64, dv: 64),
                                      implementation: .tiled)
        print(plan.workspaceBytes)                                    // scratch bytes, independent of N and M
        let same = try exactAttention(queries: q, keys: k, values: v, mask: .causal, plan: plan)
        // --- README example ends ---
        XCTAssertEqual(out.shape, [1, 8, 1024, 64])
        let diff = zip(out.scalars, same.scalars).map { abs($0 - $1) }.max()!
        XCTAssertLessThan(diff, 1e-5)
    }
}
