//! The typed chain `client.v3().businesscircle()…`: segments named like the URL (the PHP SDK's
//! rule), verbs written once over [`Sender`], so the async client returns futures and the
//! blocking client results from the same code.

use super::{
    CommitStatus, CommitStatusQuery, CommitStatusRequest, ParkingRequest, PointsNotifyRequest,
    UserAuthorization, UserAuthorizationQuery, UserAuthorizationRequest,
};
use crate::chain::Chain;
use crate::request::{Response, Sender};

macro_rules! segment {
    ($(#[$m:meta])* $name:ident $({ $($field:ident : $ty:ty),* })?) => {
        $(#[$m])*
        #[derive(Debug)]
        pub struct $name<'a, C> {
            client: &'a C,
            $($($field: $ty,)*)?
        }
    };
}

segment!(
    /// `v3/`.
    V3
);
segment!(
    /// `v3/businesscircle/`.
    Businesscircle
);
segment!(
    /// `v3/businesscircle/points/`.
    Points
);
segment!(
    /// `POST v3/businesscircle/points/notify`.
    PointsNotify
);
segment!(
    /// `GET v3/businesscircle/user-authorizations/{openid}`.
    UserAuthorizations { openid: String }
);
segment!(
    /// `v3/businesscircle/users/{openid}/`.
    Users { openid: String }
);
segment!(
    /// `v3/businesscircle/users/{openid}/points/`.
    UserPoints { openid: String }
);
segment!(
    /// `GET v3/businesscircle/users/{openid}/points/commit_status`.
    CommitStatusEndpoint { openid: String }
);
segment!(
    /// `POST v3/businesscircle/parkings`.
    Parkings
);

impl<'a, C> V3<'a, C> {
    pub(crate) fn new(client: &'a C) -> Self {
        Self { client }
    }
    /// `businesscircle/`.
    pub fn businesscircle(&self) -> Businesscircle<'a, C> {
        Businesscircle {
            client: self.client,
        }
    }
}

impl<'a, C> Businesscircle<'a, C> {
    /// `points/`.
    pub fn points(&self) -> Points<'a, C> {
        Points {
            client: self.client,
        }
    }
    /// `user-authorizations/{openid}`.
    pub fn user_authorizations(&self, openid: impl Into<String>) -> UserAuthorizations<'a, C> {
        UserAuthorizations {
            client: self.client,
            openid: openid.into(),
        }
    }
    /// `users/{openid}/`.
    pub fn users(&self, openid: impl Into<String>) -> Users<'a, C> {
        Users {
            client: self.client,
            openid: openid.into(),
        }
    }
    /// `parkings`.
    pub fn parkings(&self) -> Parkings<'a, C> {
        Parkings {
            client: self.client,
        }
    }
    /// Any other path under `v3/businesscircle/` through the raw chain.
    pub fn chain(&self, rest: &str) -> Chain<'a, C> {
        Chain::new(
            self.client,
            &format!("v3/businesscircle/{}", rest.trim_start_matches('/')),
        )
    }
}

impl<'a, C> Points<'a, C> {
    /// `notify`.
    pub fn notify(&self) -> PointsNotify<'a, C> {
        PointsNotify {
            client: self.client,
        }
    }
}

impl<'a, C> Users<'a, C> {
    /// `points/`.
    pub fn points(&self) -> UserPoints<'a, C> {
        UserPoints {
            client: self.client,
            openid: self.openid.clone(),
        }
    }
}

impl<'a, C> UserPoints<'a, C> {
    /// `commit_status`.
    pub fn commit_status(&self) -> CommitStatusEndpoint<'a, C> {
        CommitStatusEndpoint {
            client: self.client,
            openid: self.openid.clone(),
        }
    }
}

impl<'a, C: Sender> PointsNotify<'a, C> {
    /// Sends the points sync; `Ok` means WeChat answered a verified 2xx (204).
    pub fn post(&self, req: &PointsNotifyRequest) -> C::Sent<'a, Response> {
        self.client.send_call(req.clone())
    }
}

impl<'a, C: Sender> UserAuthorizations<'a, C> {
    /// Queries the member's authorization state.
    pub fn get(&self, query: &UserAuthorizationQuery) -> C::Sent<'a, UserAuthorization> {
        self.client.send_call(UserAuthorizationRequest {
            openid: self.openid.clone(),
            query: query.clone(),
        })
    }
}

impl<'a, C: Sender> CommitStatusEndpoint<'a, C> {
    /// Queries whether today's consumption waits for points.
    pub fn get(&self, query: &CommitStatusQuery) -> C::Sent<'a, CommitStatus> {
        self.client.send_call(CommitStatusRequest {
            openid: self.openid.clone(),
            query: query.clone(),
        })
    }
}

impl<'a, C: Sender> Parkings<'a, C> {
    /// Syncs a parking event; `Ok` means a verified 2xx (204).
    pub fn post(&self, req: &ParkingRequest) -> C::Sent<'a, Response> {
        self.client.send_call(req.clone())
    }
}
