import Foundation
@testable import MixtureOfExperts
import XCTest

/// ``MoEError``'s typed cases, field by field.
final class MoEErrorTests: XCTestCase {
    func testTooLargeConfigNamesItsSizes() {
        XCTAssertThrowsError(try MoEConfig(hidden: 1 << 20, expertSizes: [8, 1 << 21], topK: 1, renormalize: false)) {
            XCTAssertEqual($0 as? MoEError, .tooLarge(hidden: 1 << 20, largestExpert: 1 << 21, limit: 1 << 40))
            XCTAssertTrue("\($0)".hasPrefix("too large: hidden 1048576 × expert sizes up to 2097152"), "\($0)")
        }
        XCTAssertThrowsError(try MoEConfig(hidden: (1 << 40) + 1, expertSizes: [1], topK: 1, renormalize: false)) {
            XCTAssertEqual($0 as? MoEError, .tooLarge(hidden: (1 << 40) + 1, largestExpert: 1, limit: 1 << 40))
        }
        XCTAssertNoThrow(try MoEConfig(hidden: 1 << 20, expertSizes: [1 << 20], topK: 1, renormalize: false))
    }

    func testOtherConfigErrors() {
        XCTAssertThrowsError(try MoEConfig(hidden: 8, expertSizes: [4, 0], topK: 1, renormalize: false)) {
            XCTAssertEqual($0 as? MoEError, .invalidExpertSize(expert: 1, size: 0))
        }
        XCTAssertThrowsError(try MoEConfig(hidden: 8, expertSizes: [4, 4], topK: 3, renormalize: false)) {
            XCTAssertEqual($0 as? MoEError, .invalidTopK(3, experts: 2))
        }
    }
}
