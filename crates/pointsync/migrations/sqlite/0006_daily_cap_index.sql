-- Every payment sums its member's credits of the day for the daily cap. The index on
-- (openid, day) found the rows but read each one's table row for kind and points: a member's
-- hundredth payment of a day read a hundred scattered pages. An index holding kind and points
-- answers the sum from the index alone, and serves every (openid, day) lookup the old one did.
DROP INDEX ledger_member;
CREATE INDEX ledger_member_day ON ledger (openid, day, kind, points);
