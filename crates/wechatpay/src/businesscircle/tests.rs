//! Field rules and paths of the typed requests.

use super::*;
use serde_json::Value;

fn ok_req() -> PointsNotifyRequest {
    PointsNotifyRequest::new(
        "4200001",
        "wx1234567890abcdef",
        "oWmn",
        true,
        100,
        "2020-05-20T13:29:35.120+08:00",
    )
}

#[test]
fn false_and_zero_are_valid_and_serialised() {
    let r = PointsNotifyRequest::new(
        "4200001",
        "wx1",
        "o1",
        false,
        0,
        "2020-05-20T13:29:35+08:00",
    )
    .no_points_remarks("商品不参与积分活动");
    r.validate().unwrap();
    let body = String::from_utf8(r.to_request().unwrap().body.to_vec()).unwrap();
    assert!(body.contains("\"earn_points\":false"), "{body}");
    assert!(body.contains("\"increased_points\":0"), "{body}");
    assert!(!body.contains("sub_mchid"), "{body}");
}

#[test]
fn field_rules() {
    let cases: Vec<(PointsNotifyRequest, &str, &str)> = vec![
        (
            PointsNotifyRequest {
                transaction_id: String::new(),
                ..ok_req()
            },
            "transaction_id",
            "empty",
        ),
        (
            PointsNotifyRequest {
                openid: "o".repeat(65),
                ..ok_req()
            },
            "openid",
            "at most 64",
        ),
        (
            PointsNotifyRequest {
                appid: "a".repeat(129),
                ..ok_req()
            },
            "appid",
            "at most 128",
        ),
        (
            PointsNotifyRequest {
                points_update_time: "2020-05-20 13:29:35".into(),
                ..ok_req()
            },
            "points_update_time",
            "RFC 3339",
        ),
        (
            ok_req().no_points_remarks("好😀"),
            "no_points_remarks",
            "4 bytes",
        ),
        (
            ok_req().no_points_remarks("x".repeat(129)),
            "no_points_remarks",
            "at most 128",
        ),
        (ok_req().sub_mchid(""), "sub_mchid", "empty"),
    ];
    for (req, field, words) in cases {
        let e = req.validate().unwrap_err();
        assert_eq!(e.field, field, "{e}");
        assert!(e.to_string().contains(words), "{e}");
    }
    ok_req()
        .no_points_remarks("汉".repeat(128))
        .validate()
        .unwrap();
}

#[test]
fn unknown_enum_values_and_fields_are_kept() {
    let a: UserAuthorization =
        serde_json::from_str(r#"{"openid":"o","authorize_state":"PAUSED","new_field":1}"#).unwrap();
    assert_eq!(a.authorize_state, AuthorizeState::Other("PAUSED".into()));
    assert_eq!(a.extra.get("new_field"), Some(&Value::from(1)));
    let c: CommitStatus = serde_json::from_str(r#"{"points_commit_status":"PENDING"}"#).unwrap();
    assert_eq!(c.points_commit_status, Some(PointsCommitStatus::Pending));
    assert_eq!(
        serde_json::to_string(&AuthorizeState::Authorized).unwrap(),
        "\"AUTHORIZED\""
    );
}

#[test]
fn parking_rules() {
    let p = ParkingRequest::new(
        1000,
        "wx1",
        "o1",
        "粤B888888",
        ParkingState::In,
        "2022-06-01T10:43:39+08:00",
    );
    p.validate().unwrap();
    let bad = ParkingRequest {
        state: ParkingState::Other("PARKED".into()),
        ..p.clone()
    };
    assert_eq!(bad.validate().unwrap_err().field, "state");
    let body = String::from_utf8(p.to_request().unwrap().body.to_vec()).unwrap();
    assert!(body.contains("\"state\":\"IN\""), "{body}");
}

#[test]
fn query_paths() {
    let r = UserAuthorizationQuery::new("wxAB")
        .sub_mchid("1900000109")
        .to_request("oAbC")
        .unwrap();
    assert_eq!(
        r.path_and_query,
        "/v3/businesscircle/user-authorizations/oAbC?sub_mchid=1900000109&appid=wxAB"
    );
    let r = CommitStatusQuery::new(1000, "wx9")
        .to_request("oUp/F")
        .unwrap();
    assert_eq!(
        r.path_and_query,
        "/v3/businesscircle/users/oUp%2FF/points/commit_status?brandid=1000&appid=wx9"
    );
}
